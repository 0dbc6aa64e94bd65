//! A deterministic stream with its expected answer, for the fault runs (`make chaos`).
//!
//! Posts calls through the ingestion API in real time: response-first pairs, duplicates
//! (both events posted again a little later, as a client retry would), late pairs (stamped
//! over a minute ago, so their window is already written), calls that fail and calls that
//! never get a response. A batch the API does not accept whole is posted again until it is,
//! as a client should: the stream is then exactly what the oracle recorded. At the end it
//! writes the exact totals each window must reach.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::{json, Value};

use crate::demo::Rng;
use crate::OracleArgs;

const ROUTES: [&str; 3] = ["/chat", "/search", "/summarize"];
const MODELS: [&str; 3] = ["gpt-4o", "gpt-4o-mini", "claude-3-5-haiku"];

/// What one window must hold once every call of the stream is decided.
#[derive(Debug, Default, Clone)]
pub struct Expected {
    pub requests: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub completed: u64,
    pub latency_sum_ms: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latencies: Vec<u64>,
}

type WindowKey = (String, &'static str, &'static str, DateTime<Utc>);

/// Counts of what the stream holds, for the report.
#[derive(Debug, Default)]
pub struct Mix {
    pub calls: u64,
    pub response_first: u64,
    pub duplicated: u64,
    pub late: u64,
    pub unanswered: u64,
    pub failed: u64,
}

/// The stream and its oracle.
#[derive(Debug)]
pub struct Stream {
    rng: Rng,
    tenants: Vec<String>,
    run: String,
    /// Events by the time they are due, with the tenant that posts them.
    pub due: BTreeMap<(DateTime<Utc>, u64), (usize, Value)>,
    seq: u64,
    pub windows: BTreeMap<WindowKey, Expected>,
    pub mix: Mix,
    /// How far back a late pair is stamped: past its window's end plus grace, within the TTL.
    late_by: (i64, i64),
}

impl Stream {
    pub fn new(tenants: Vec<String>, run: String, seed: u64, late_by: (i64, i64)) -> Self {
        Self {
            rng: Rng::new(seed),
            tenants,
            run,
            due: BTreeMap::new(),
            seq: 0,
            windows: BTreeMap::new(),
            mix: Mix::default(),
            late_by,
        }
    }

    fn schedule(&mut self, at: DateTime<Utc>, tenant: usize, event: Value) {
        self.seq += 1;
        self.due.insert((at, self.seq), (tenant, event));
    }

    /// One call made at `now` (or, for a late pair, stamped earlier).
    pub fn call(&mut self, now: DateTime<Utc>) {
        self.mix.calls += 1;
        let i = self.mix.calls;
        let tenant = (i as usize) % self.tenants.len();
        let route = ROUTES[self.rng.pick(&[3.0, 2.0, 1.0])];
        let model = MODELS[self.rng.pick(&[1.0, 3.0, 1.0])];
        let late = self.rng.unit() < 0.05;
        let at = if late {
            self.mix.late += 1;
            let (lo, hi) = self.late_by;
            now - TimeDelta::milliseconds(
                1000 * lo + (self.rng.unit() * 1000.0 * (hi - lo) as f64) as i64,
            )
        } else {
            now
        };
        let id = format!("{}-{i}", self.run);
        let prompt_tokens = self.rng.lognormal(600.0, 0.7).round() as u64;
        let request = json!({
            "type": "request", "request_id": id, "tenant_id": self.tenants[tenant],
            "route": route, "model": model, "timestamp": at.to_rfc3339(),
            "prompt_tokens": prompt_tokens,
        });
        let minute = at.duration_trunc(TimeDelta::minutes(1)).expect("a minute");
        let key = (self.tenants[tenant].clone(), route, model, minute);
        let expected = self.windows.entry(key).or_default();
        expected.requests += 1;
        // A late call is posted whole at once; a live one's response when it returns.
        let post_at = |t: DateTime<Utc>| if late { now } else { t };
        if self.rng.unit() < 0.03 {
            self.mix.unanswered += 1;
            expected.timeouts += 1;
            self.schedule(now, tenant, request);
            return;
        }
        let latency = self.rng.lognormal(700.0, 0.6).clamp(5.0, 20_000.0).round() as u64;
        let failed = self.rng.unit() < 0.04;
        let completion = if failed {
            0
        } else {
            self.rng.lognormal(200.0, 0.7).round() as u64
        };
        let returned = at + TimeDelta::milliseconds(latency as i64);
        let mut response = json!({
            "type": "response", "request_id": id, "tenant_id": self.tenants[tenant],
            "timestamp": returned.to_rfc3339(), "latency_ms": latency,
            "completion_tokens": completion, "finish_reason": if failed { "error" } else { "stop" },
        });
        if failed {
            self.mix.failed += 1;
            response["error"] = json!("upstream_error");
        }
        expected.completed += 1;
        expected.errors += u64::from(failed);
        expected.latency_sum_ms += latency;
        expected.prompt_tokens += prompt_tokens;
        expected.completion_tokens += completion;
        expected.latencies.push(latency);
        let response_first = self.rng.unit() < 0.05;
        let request_at = if response_first {
            self.mix.response_first += 1;
            post_at(returned) + TimeDelta::milliseconds(300)
        } else {
            now
        };
        if self.rng.unit() < 0.05 {
            // A client retry: both events again, a second or two later.
            self.mix.duplicated += 1;
            let again = TimeDelta::milliseconds(1000 + (self.rng.unit() * 1000.0) as i64);
            self.schedule(request_at + again, tenant, request.clone());
            self.schedule(post_at(returned) + again, tenant, response.clone());
        }
        self.schedule(request_at, tenant, request);
        self.schedule(post_at(returned), tenant, response);
    }

    /// Events due by `now`, earliest first.
    pub fn take_due(&mut self, now: DateTime<Utc>) -> Vec<(usize, Value)> {
        let later = self.due.split_off(&(now, u64::MAX));
        std::mem::replace(&mut self.due, later)
            .into_values()
            .collect()
    }

    /// The expected windows as JSON: sums exactly, p95 as the exact quantile of the latencies.
    pub fn oracle(&self) -> Value {
        let windows: Vec<Value> = self
            .windows
            .iter()
            .map(|((tenant, route, model, start), e)| {
                let mut sorted = e.latencies.clone();
                sorted.sort_unstable();
                let p95 = (!sorted.is_empty()).then(|| {
                    let rank = ((0.95 * sorted.len() as f64).ceil() as usize).max(1);
                    sorted[rank - 1]
                });
                json!({
                    "tenant_id": tenant, "route": route, "model": model,
                    "window_start": start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "requests": e.requests, "errors": e.errors, "timeouts": e.timeouts,
                    "completed": e.completed, "latency_sum_ms": e.latency_sum_ms,
                    "prompt_tokens": e.prompt_tokens, "completion_tokens": e.completion_tokens,
                    "p95_latency_ms": p95,
                })
            })
            .collect();
        json!({
            "calls": self.mix.calls, "response_first": self.mix.response_first,
            "duplicated": self.mix.duplicated, "late": self.mix.late,
            "unanswered": self.mix.unanswered, "failed": self.mix.failed,
            "windows": windows,
        })
    }
}

/// Posts `events` of one tenant until the API accepts the whole batch. Every answer that
/// was not an acceptance is counted in `failures` by its status (`connection` when there was
/// no answer at all).
async fn post_until_accepted(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    events: &[Value],
    retries: &mut u64,
    failures: &mut BTreeMap<String, u64>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut request = client.post(url).json(events);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        match request.send().await {
            Ok(r) => {
                let status = r.status();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                if status.as_u16() == 202 && body["accepted"].as_u64() == Some(events.len() as u64)
                {
                    return;
                }
                if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408 {
                    // The stream is valid by construction: a 4xx is a bug, never retried away.
                    panic!("the API rejected a batch of the oracle stream: {status} {body}");
                }
                *failures.entry(status.as_u16().to_string()).or_default() += 1;
            }
            Err(_) => *failures.entry("connection".into()).or_default() += 1,
        }
        *retries += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// `oracle --url U --out FILE [--keys T=K,...] [--rate CALLS_PER_SEC] [--duration-secs S]
/// [--late-from SECS --late-to SECS] [--seed N]`
pub async fn run(args: &OracleArgs) -> anyhow::Result<Value> {
    let url = format!("{}/v1/llm/batch", args.ingestion.url);
    let out = &args.out;
    let (tenants, keys) = crate::demo::tenant_keys(&args.tenants)?;
    let rate = args.rate as f64;
    let duration = Duration::from_secs(args.duration_secs);
    let late_by = (args.late_from, args.late_to);
    let seed = args.seed;
    let mut stream = Stream::new(tenants, crate::events::run_tag(), seed, late_by);
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut next_call = Utc::now();
    let step = TimeDelta::microseconds((1e6 / rate.max(0.1)) as i64);
    let mut retries = 0;
    let mut failures = BTreeMap::new();
    let mut posted = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let now = Utc::now();
        let live = started.elapsed() < duration;
        while live && next_call <= now {
            stream.call(next_call);
            next_call += step;
        }
        // After the load, whatever is still due goes out at once.
        let due = stream.take_due(if live { now } else { DateTime::<Utc>::MAX_UTC });
        let mut by_tenant: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
        for (tenant, event) in due {
            by_tenant.entry(tenant).or_default().push(event);
        }
        for (tenant, events) in by_tenant {
            for chunk in events.chunks(1000) {
                post_until_accepted(
                    &client,
                    &url,
                    keys[tenant].as_deref(),
                    chunk,
                    &mut retries,
                    &mut failures,
                )
                .await;
                posted += chunk.len() as u64;
            }
        }
        if !live && stream.due.is_empty() {
            break;
        }
    }
    let oracle = stream.oracle();
    std::fs::write(out, serde_json::to_vec(&oracle)?)?;
    Ok(json!({
        "mode": "oracle", "out": out, "events_posted": posted, "batches_retried": retries,
        "failures": failures,
        "seconds": started.elapsed().as_secs_f64(), "calls": oracle["calls"],
        "response_first": oracle["response_first"], "duplicated": oracle["duplicated"],
        "late": oracle["late"], "unanswered": oracle["unanswered"], "failed": oracle["failed"],
        "windows": oracle["windows"].as_array().map_or(0, Vec::len),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(calls: usize) -> Stream {
        let mut s = Stream::new(vec!["a".into(), "b".into()], "t".into(), 3, (62, 75));
        let now = Utc::now();
        for _ in 0..calls {
            s.call(now);
        }
        s
    }

    #[test]
    fn the_oracle_counts_each_call_once_whatever_is_posted_twice() {
        let mut s = stream(5_000);
        let requests: u64 = s.windows.values().map(|e| e.requests).sum();
        assert_eq!(requests, 5_000);
        let events = s.take_due(DateTime::<Utc>::MAX_UTC);
        let posted_requests = events
            .iter()
            .filter(|(_, e)| e["type"] == "request")
            .count() as u64;
        assert_eq!(
            posted_requests,
            5_000 + s.mix.duplicated,
            "duplicates are posted again"
        );
        let timeouts: u64 = s.windows.values().map(|e| e.timeouts).sum();
        assert_eq!(timeouts, s.mix.unanswered);
        for e in s.windows.values() {
            assert_eq!(e.requests, e.completed + e.timeouts);
            assert_eq!(e.latency_sum_ms, e.latencies.iter().sum::<u64>());
        }
    }

    #[test]
    fn the_stream_holds_every_kind_of_difficulty() {
        let s = stream(5_000);
        for (name, n) in [
            ("response first", s.mix.response_first),
            ("duplicated", s.mix.duplicated),
            ("late", s.mix.late),
            ("unanswered", s.mix.unanswered),
            ("failed", s.mix.failed),
        ] {
            assert!(n > 50, "{name}: {n}");
        }
    }

    #[test]
    fn a_late_pair_is_stamped_in_an_earlier_minute_and_posted_at_once() {
        let mut s = Stream::new(vec!["a".into()], "t".into(), 9, (62, 75));
        let now = Utc::now();
        for _ in 0..2_000 {
            s.call(now);
        }
        let events = s.take_due(now + TimeDelta::seconds(1));
        let old: Vec<&Value> = events
            .iter()
            .map(|(_, e)| e)
            .filter(|e| {
                let at: DateTime<Utc> = e["timestamp"].as_str().unwrap().parse().unwrap();
                e["type"] == "request" && now - at >= TimeDelta::seconds(62)
            })
            .collect();
        assert!(
            old.len() as u64 >= s.mix.late * 9 / 10,
            "{} of {}",
            old.len(),
            s.mix.late
        );
    }
}
