//! Per-key rate limiting: a token bucket per API key, refilled at a steady rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept at most; the oldest-refilled are dropped beyond it (they were full anyway
/// after a second of silence at any sane rate).
const MAX_BUCKETS: usize = 100_000;

#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_sec` events a second on average, up to `burst` at once.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            per_sec: f64::from(per_sec.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `events` tokens from `key`'s bucket at `now`, or says how long until there are
    /// enough. A batch larger than the burst needs a full bucket.
    pub fn take(&self, key: &str, events: usize, now: Instant) -> Result<(), Duration> {
        let need = (events as f64).min(self.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            let stale = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
            buckets.retain(|_, (_, at)| *at > stale);
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        let refilled = self.refilled(*tokens, *at, now);
        *at = now;
        if refilled >= need {
            *tokens = refilled - need;
            Ok(())
        } else {
            *tokens = refilled;
            Err(self.wait(need - refilled))
        }
    }

    /// Whether `key`'s bucket holds at least one event at `now`, taking nothing. A key without
    /// one would have any request refused, so a batch can be refused before its body is read.
    pub fn has_room(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        match buckets.get(key) {
            Some(&(tokens, at)) => {
                let refilled = self.refilled(tokens, at, now);
                if refilled >= 1.0 {
                    Ok(())
                } else {
                    Err(self.wait(1.0 - refilled))
                }
            }
            None => Ok(()), // a full bucket
        }
    }

    fn refilled(&self, tokens: f64, at: Instant, now: Instant) -> f64 {
        (tokens + now.saturating_duration_since(at).as_secs_f64() * self.per_sec).min(self.burst)
    }

    /// How long the bucket takes to refill `missing` events.
    fn wait(&self, missing: f64) -> Duration {
        Duration::from_secs_f64(missing / self.per_sec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let limiter = RateLimiter::new(10, 20);
        let t0 = Instant::now();
        for _ in 0..20 {
            assert!(limiter.take("k", 1, t0).is_ok());
        }
        let wait = limiter.take("k", 1, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // Half a second later, five more.
        let later = t0 + Duration::from_millis(500);
        assert!(limiter.take("k", 5, later).is_ok());
        assert!(limiter.take("k", 1, later).is_err());
    }

    #[test]
    fn room_is_asked_without_taking_any() {
        let limiter = RateLimiter::new(10, 2);
        let t0 = Instant::now();
        assert!(
            limiter.has_room("k", t0).is_ok(),
            "an unseen key has a full bucket"
        );
        assert!(limiter.take("k", 1, t0).is_ok());
        for _ in 0..3 {
            assert!(limiter.has_room("k", t0).is_ok());
        }
        assert!(limiter.take("k", 1, t0).is_ok(), "asking took nothing");
        let wait = limiter.has_room("k", t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // Half an event refilled is not room for one.
        assert!(limiter
            .has_room("k", t0 + Duration::from_millis(50))
            .is_err());
        assert!(limiter
            .has_room("k", t0 + Duration::from_millis(100))
            .is_ok());
    }

    #[test]
    fn keys_have_buckets_of_their_own() {
        let limiter = RateLimiter::new(1, 2);
        let t0 = Instant::now();
        assert!(limiter.take("a", 2, t0).is_ok());
        assert!(limiter.take("a", 1, t0).is_err());
        assert!(limiter.take("b", 2, t0).is_ok());
    }

    #[test]
    fn a_batch_larger_than_the_burst_needs_a_full_bucket() {
        let limiter = RateLimiter::new(100, 50);
        let t0 = Instant::now();
        assert!(limiter.take("k", 500, t0).is_ok());
        let wait = limiter.take("k", 500, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
    }
}
