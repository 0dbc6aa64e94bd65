//! One-minute tumbling windows per (tenant, route, model), keyed by the request's event time.
//!
//! A window closes once the watermark passes its end plus the grace; its aggregate is then
//! handed out to be merged into the stored row. A contribution to a window that already
//! closed opens a fresh partial for it, handed out at the next close and merged the same way:
//! late events add to the stored row, never replace it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use common::events::ResponseEvent;

use super::histogram::{self, Latencies};
use super::join::Names;
use super::offsets::{Input, Needed, Source};
use super::pricing::Cost;

pub const WINDOW: TimeDelta = TimeDelta::minutes(1);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowKey {
    pub tenant: Arc<str>,
    pub route: Arc<str>,
    pub model: Arc<str>,
    pub start: DateTime<Utc>,
}

impl WindowKey {
    pub fn end(&self) -> DateTime<Utc> {
        self.start + WINDOW
    }

    /// The `llm.metrics` record key.
    pub fn metrics_key(&self) -> String {
        format!("{}|{}|{}", self.tenant, self.route, self.model)
    }
}

/// Everything a window row is computed from. All fields add up under [`Aggregate::merge`], so
/// partials from restarts, partitions and instances combine exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// Requests in the window: paired and timed out.
    pub requests: u64,
    /// Paired requests whose response carries an error.
    pub errors: u64,
    /// Requests whose response never came within the TTL.
    pub timeouts: u64,
    /// Paired requests; the count behind every latency and token average.
    pub completed: u64,
    pub latency_sum_ms: u64,
    pub ttft_sum_ms: u64,
    pub ttft_count: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub cost_nanos: u64,
    /// Paired requests whose model has no price of its own.
    pub unpriced: u64,
    pub latency: Latencies,
    pub ttft: Latencies,
}

impl Default for Aggregate {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            timeouts: 0,
            completed: 0,
            latency_sum_ms: 0,
            ttft_sum_ms: 0,
            ttft_count: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            cached_prompt_tokens: 0,
            cost_nanos: 0,
            unpriced: 0,
            latency: histogram::new(),
            ttft: histogram::new(),
        }
    }
}

impl Aggregate {
    pub fn record_paired(&mut self, prompt_tokens: u64, response: &ResponseEvent, cost: Cost) {
        self.requests += 1;
        self.completed += 1;
        self.errors += u64::from(response.is_error());
        self.latency_sum_ms += response.latency_ms;
        histogram::record(&mut self.latency, response.latency_ms);
        if let Some(ttft) = response.time_to_first_token_ms {
            self.ttft_sum_ms += ttft;
            self.ttft_count += 1;
            histogram::record(&mut self.ttft, ttft);
        }
        self.prompt_tokens += prompt_tokens;
        self.completion_tokens += response.completion_tokens;
        self.cached_prompt_tokens += response
            .cached_prompt_tokens
            .unwrap_or(0)
            .min(prompt_tokens);
        self.cost_nanos += cost.nanos;
        self.unpriced += u64::from(!cost.priced);
    }

    pub fn record_timeout(&mut self) {
        self.requests += 1;
        self.timeouts += 1;
    }

    pub fn merge(&mut self, other: &Aggregate) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.timeouts += other.timeouts;
        self.completed += other.completed;
        self.latency_sum_ms += other.latency_sum_ms;
        self.ttft_sum_ms += other.ttft_sum_ms;
        self.ttft_count += other.ttft_count;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cached_prompt_tokens += other.cached_prompt_tokens;
        self.cost_nanos += other.cost_nanos;
        self.unpriced += other.unpriced;
        // Same configuration everywhere, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.ttft.add(&other.ttft);
    }

    fn ratio(sum: u64, count: u64) -> f64 {
        if count == 0 {
            0.0
        } else {
            sum as f64 / count as f64
        }
    }

    pub fn avg_latency_ms(&self) -> f64 {
        Self::ratio(self.latency_sum_ms, self.completed)
    }

    pub fn avg_ttft_ms(&self) -> Option<f64> {
        (self.ttft_count > 0).then(|| Self::ratio(self.ttft_sum_ms, self.ttft_count))
    }

    pub fn avg_prompt_tokens(&self) -> f64 {
        Self::ratio(self.prompt_tokens, self.completed)
    }

    pub fn avg_completion_tokens(&self) -> f64 {
        Self::ratio(self.completion_tokens, self.completed)
    }

    /// A latency percentile (`q` in 0..=1), 0 for a window without paired requests.
    pub fn latency_quantile_ms(&self, q: f64) -> u64 {
        if self.latency.is_empty() {
            0
        } else {
            self.latency.value_at_quantile(q)
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Open {
    aggregate: Aggregate,
    /// Smallest input offset that contributed, per input partition: held until written.
    oldest: BTreeMap<(Input, i32), i64>,
}

#[derive(Debug, Clone)]
pub struct Windows {
    grace: TimeDelta,
    open: HashMap<WindowKey, Open>,
    /// The watermark of the last close: windows ending (plus grace) at or before it are out.
    closed_through: Option<DateTime<Utc>>,
    needed: Needed,
}

impl Windows {
    pub fn new(grace: TimeDelta) -> Self {
        Self {
            grace,
            open: HashMap::new(),
            closed_through: None,
            needed: Needed::default(),
        }
    }

    pub fn needed(&self) -> &Needed {
        &self.needed
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Whether the window starting at `start` closes once the watermark reaches `watermark`.
    pub fn closes_by(&self, start: DateTime<Utc>, watermark: DateTime<Utc>) -> bool {
        start + WINDOW + self.grace <= watermark
    }

    /// The window of a request: its names and the minute of its timestamp.
    pub fn key_of(&self, names: &Names, timestamp: DateTime<Utc>) -> WindowKey {
        let start = timestamp.duration_trunc(WINDOW).unwrap_or(timestamp);
        WindowKey {
            tenant: Arc::clone(&names.tenant),
            route: Arc::clone(&names.route),
            model: Arc::clone(&names.model),
            start,
        }
    }

    /// Adds to a window; `true` when that window had already closed (a late contribution).
    pub fn add(
        &mut self,
        key: WindowKey,
        sources: &[Source],
        apply: impl FnOnce(&mut Aggregate),
    ) -> bool {
        let late = self
            .closed_through
            .is_some_and(|w| self.closes_by(key.start, w));
        let open = self.open.entry(key).or_default();
        apply(&mut open.aggregate);
        for source in sources {
            let slot = open.oldest.entry(source.topic_partition());
            match slot {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(source.offset);
                    self.needed.hold(*source);
                }
                std::collections::btree_map::Entry::Occupied(mut o) if source.offset < *o.get() => {
                    let (input, partition) = source.topic_partition();
                    self.needed.release(Source {
                        input,
                        partition,
                        offset: *o.get(),
                    });
                    o.insert(source.offset);
                    self.needed.hold(*source);
                }
                std::collections::btree_map::Entry::Occupied(_) => {}
            }
        }
        late
    }

    /// Hands out every window the watermark has closed, with what it holds released.
    pub fn close(&mut self, watermark: DateTime<Utc>) -> Vec<(WindowKey, Aggregate)> {
        let grace = self.grace;
        let closing: Vec<WindowKey> = self
            .open
            .keys()
            .filter(|k| k.start + WINDOW + grace <= watermark)
            .cloned()
            .collect();
        let mut out = Vec::with_capacity(closing.len());
        for key in closing {
            if let Some(open) = self.open.remove(&key) {
                for ((input, partition), offset) in open.oldest {
                    self.needed.release(Source {
                        input,
                        partition,
                        offset,
                    });
                }
                out.push((key, open.aggregate));
            }
        }
        self.closed_through = Some(self.closed_through.map_or(watermark, |w| w.max(watermark)));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests;
