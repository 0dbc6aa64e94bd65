//! Demo traffic: what a few LLM applications in production post, at a steady rate.
//!
//! Several tenants, each with its own mix of routes and models; latencies drawn from a
//! lognormal per model (a long right tail, as real calls have), time to first token, token
//! counts per route, a few percent of failed calls. Each response is posted when its call
//! returns; some responses are posted before their requests, and a few requests never get
//! one. `--backfill-minutes` first posts that many minutes of history, so charts have
//! something to show at once.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use rand::distributions::{Distribution, WeightedIndex};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};
use serde_json::{json, Value};

use crate::{DemoArgs, Tenants};

/// Share of calls whose response is posted before the request.
const RESPONSE_FIRST: f64 = 0.04;
/// Share of calls that never get a response (the processor counts them as timeouts).
const UNANSWERED: f64 = 0.01;
/// Share of answered calls that fail.
const FAILED: f64 = 0.03;
const ERRORS: [&str; 3] = [
    "rate_limit_exceeded",
    "upstream_timeout",
    "context_length_exceeded",
];

/// Who serves each model of [`MODELS`] (`gen_ai.provider.name`).
fn provider(model: &str) -> &'static str {
    match model.split('-').next() {
        Some("claude") => "anthropic",
        Some("gemini") => "gcp.gemini",
        _ => "openai",
    }
}

/// Model, median latency (ms) and spread of its lognormal.
const MODELS: [(&str, f64, f64); 5] = [
    ("gpt-4o", 1400.0, 0.55),
    ("gpt-4o-mini", 650.0, 0.45),
    ("claude-3-5-sonnet", 1800.0, 0.6),
    ("claude-3-5-haiku", 800.0, 0.5),
    ("gemini-1.5-flash", 500.0, 0.4),
];
/// Route, median prompt tokens, median completion tokens.
const ROUTES: [(&str, f64, f64); 4] = [
    ("/chat", 900.0, 350.0),
    ("/summarize", 3500.0, 250.0),
    ("/search", 450.0, 120.0),
    ("/classify", 250.0, 8.0),
];
/// Tenants in order of traffic; each weighs routes and models its own way.
const TENANT_SHARE: [f64; 3] = [0.5, 0.3, 0.2];

/// The draws behind the generated traffic, from a seed: the same seed gives the same traffic.
#[derive(Debug)]
pub struct Rng(StdRng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(StdRng::seed_from_u64(seed))
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0.gen()
    }

    /// Lognormal with the given median and spread (sigma of the underlying normal).
    pub fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        // Box-Muller; 1 - unit() is in (0, 1], so the logarithm is finite.
        let z = (-2.0 * (1.0 - self.unit()).ln()).sqrt()
            * (2.0 * std::f64::consts::PI * self.unit()).cos();
        median * (sigma * z).exp()
    }

    /// An index drawn with the given weights (positive, as every table here has them).
    pub fn pick(&mut self, weights: &[f64]) -> usize {
        WeightedIndex::new(weights).map_or(0, |w| w.sample(&mut self.0))
    }
}

/// One event to post at `due`, for `tenant` (index into the tenant list).
#[derive(Debug, Clone, PartialEq)]
pub struct Post {
    pub due: DateTime<Utc>,
    pub tenant: usize,
    pub event: Value,
}

/// Calls of the demo applications, as the events their clients post.
#[derive(Debug)]
pub struct Traffic {
    rng: Rng,
    tenants: Vec<String>,
    run: String,
    calls: u64,
}

impl Traffic {
    pub fn new(tenants: Vec<String>, run: String, seed: u64) -> Self {
        Self {
            rng: Rng::new(seed),
            tenants,
            run,
            calls: 0,
        }
    }

    /// The events of one call made at `at`: its request, and its response unless it never
    /// comes, each with the time its client posts it.
    pub fn call(&mut self, at: DateTime<Utc>) -> Vec<Post> {
        self.calls += 1;
        let shares: Vec<f64> = (0..self.tenants.len())
            .map(|t| TENANT_SHARE.get(t).copied().unwrap_or(0.1))
            .collect();
        let tenant = self.rng.pick(&shares);
        // Each tenant favours a different route and model.
        let route_weights: Vec<f64> = (0..ROUTES.len())
            .map(|r| if r == tenant % ROUTES.len() { 4.0 } else { 1.0 })
            .collect();
        let model_weights: Vec<f64> = (0..MODELS.len())
            .map(|m| {
                if (m + tenant).is_multiple_of(2) {
                    3.0
                } else {
                    1.0
                }
            })
            .collect();
        let (route, prompt_median, completion_median) = ROUTES[self.rng.pick(&route_weights)];
        let (model, latency_median, spread) = MODELS[self.rng.pick(&model_weights)];
        let request_id = format!("{}-{}", self.run, self.calls);
        let prompt_tokens = self.rng.lognormal(prompt_median, 0.6).round().max(1.0) as u64;
        let request = json!({
            "type": "request",
            "request_id": request_id,
            "tenant_id": self.tenants[tenant],
            "route": route,
            "model": model,
            "provider": provider(model),
            "timestamp": at.to_rfc3339(),
            "prompt_tokens": prompt_tokens,
        });
        if self.rng.unit() < UNANSWERED {
            return vec![Post {
                due: at,
                tenant,
                event: request,
            }];
        }
        let failed = self.rng.unit() < FAILED;
        let mut latency = self
            .rng
            .lognormal(latency_median, spread)
            .clamp(20.0, 120_000.0);
        if failed {
            latency *= 0.3;
        }
        let latency = latency.round() as u64;
        let returned = at + TimeDelta::milliseconds(latency as i64);
        let mut response = json!({
            "type": "response",
            "request_id": request_id,
            "tenant_id": self.tenants[tenant],
            "timestamp": returned.to_rfc3339(),
            "latency_ms": latency,
            "completion_tokens": 0,
            "finish_reason": "error",
        });
        if failed {
            let error = ERRORS[self.rng.pick(&[3.0, 1.0, 1.0])];
            response["error"] = json!(error);
            // The class, as an instrumentation's `error.type` gives it.
            response["error_type"] = json!(error);
        } else {
            let completion = self.rng.lognormal(completion_median, 0.7).round().max(1.0);
            let ttft = latency as f64 * (0.1 + 0.25 * self.rng.unit());
            response["completion_tokens"] = json!(completion as u64);
            response["finish_reason"] = json!(if self.rng.unit() < 0.05 {
                "length"
            } else {
                "stop"
            });
            response["time_to_first_token_ms"] = json!(ttft.round() as u64);
            if route == "/chat" {
                response["cached_prompt_tokens"] = json!(prompt_tokens / 2);
            }
        }
        // A client that posts the request late, after the call returned.
        let request_due = if self.rng.unit() < RESPONSE_FIRST {
            returned + TimeDelta::milliseconds(500)
        } else {
            at
        };
        vec![
            Post {
                due: request_due,
                tenant,
                event: request,
            },
            Post {
                due: returned,
                tenant,
                event: response,
            },
        ]
    }
}

/// Posts waiting for their time, earliest first.
#[derive(Debug, Default)]
struct Schedule {
    heap: BinaryHeap<Reverse<(DateTime<Utc>, u64)>>,
    posts: BTreeMap<u64, Post>,
    seq: u64,
}

impl Schedule {
    fn push(&mut self, post: Post) {
        self.seq += 1;
        self.heap.push(Reverse((post.due, self.seq)));
        self.posts.insert(self.seq, post);
    }

    /// Every post due by `now`, in order.
    fn due(&mut self, now: DateTime<Utc>) -> Vec<Post> {
        let mut out = Vec::new();
        while let Some(Reverse((due, seq))) = self.heap.peek().copied() {
            if due > now {
                break;
            }
            self.heap.pop();
            out.extend(self.posts.remove(&seq));
        }
        out
    }
}

/// Counts of what was posted.
#[derive(Debug, Default)]
struct Tally {
    events: u64,
    accepted: u64,
    /// Request events in batches accepted whole: the calls the windows must count.
    requests_accepted: u64,
    rejected: u64,
    failed_posts: u64,
}

/// Posts the due events of each tenant as one batch with its key.
async fn post(
    client: &reqwest::Client,
    url: &str,
    keys: &[Option<String>],
    posts: Vec<Post>,
    tally: &mut Tally,
) {
    let mut by_tenant: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
    for p in posts {
        by_tenant.entry(p.tenant).or_default().push(p.event);
    }
    for (tenant, events) in by_tenant {
        for chunk in events.chunks(1000) {
            tally.events += chunk.len() as u64;
            let mut request = client.post(url).json(chunk);
            if let Some(key) = &keys[tenant] {
                request = request.bearer_auth(key);
            }
            match request.send().await {
                Ok(r) => {
                    let status = r.status();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    let accepted = body["accepted"].as_u64().unwrap_or(0);
                    tally.accepted += accepted;
                    tally.rejected += chunk.len() as u64 - accepted.min(chunk.len() as u64);
                    if accepted == chunk.len() as u64 {
                        tally.requests_accepted +=
                            chunk.iter().filter(|e| e["type"] == "request").count() as u64;
                    }
                    if !status.is_success() {
                        eprintln!("demo: batch answered {status}: {body}");
                    }
                }
                Err(e) => {
                    tally.failed_posts += 1;
                    eprintln!("demo: batch not posted: {e}");
                }
            }
        }
    }
}

/// The tenants to post for and their API keys, from `--keys acme=K1,globex=K2`; without it,
/// three tenants and no keys (`AUTH_MODE=disabled`).
pub fn tenant_keys(tenants: &Tenants) -> anyhow::Result<(Vec<String>, Vec<Option<String>>)> {
    let keys = &tenants.keys;
    if keys.is_empty() {
        let tenants = ["acme", "globex", "initech"].map(String::from).to_vec();
        return Ok((tenants, vec![None; 3]));
    }
    let pairs = keys
        .split(',')
        .map(|pair| match pair.split_once('=') {
            Some((t, k)) => Ok((t.to_owned(), Some(k.to_owned()))),
            None => anyhow::bail!("--keys takes tenant=key pairs, got {pair}"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(pairs.into_iter().unzip())
}

/// `demo --url U [--keys acme=K1,globex=K2] [--rate EVENTS_PER_SEC] [--backfill-minutes M]
/// [--duration-secs S] [--seed N]`: runs until stopped, or for `S` seconds and then reports.
pub async fn run(args: &DemoArgs) -> anyhow::Result<Value> {
    let url = format!("{}/v1/llm/batch", args.ingestion.url);
    let (tenants, keys) = tenant_keys(&args.tenants)?;
    // Two events per call.
    let calls_per_sec = (args.rate as f64 / 2.0).max(0.1);
    let backfill = args.backfill_minutes;
    let duration = args.duration_secs;
    let seed = args.seed;
    let mut traffic = Traffic::new(tenants, crate::events::run_tag(), seed);
    let mut schedule = Schedule::default();
    let client = reqwest::Client::new();
    let mut tally = Tally::default();
    let started = Instant::now();
    let step = TimeDelta::microseconds((1e6 / calls_per_sec) as i64);

    // History first, oldest first, so the processor closes its windows as it goes.
    // Posted in slices of history of about 5,000 events (at least 5 s), each holding what is
    // due two minutes before the slice's end, so late responses still come in their order.
    let slice = TimeDelta::milliseconds(((5000.0 / args.rate.max(1) as f64).max(5.0) * 1e3) as i64);
    let mut at = Utc::now() - TimeDelta::minutes(backfill as i64);
    let mut posted_to = at;
    let mut backfill_events = 0;
    while at < Utc::now() {
        for p in traffic.call(at) {
            schedule.push(p);
        }
        at += step;
        if at - posted_to >= slice {
            let due = schedule.due(at - TimeDelta::minutes(2));
            backfill_events += due.len();
            post(&client, &url, &keys, due, &mut tally).await;
            posted_to = at;
        }
    }
    if backfill > 0 {
        eprintln!("demo: {backfill} minutes of history posted ({backfill_events} events)");
    }

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut report = Instant::now();
    loop {
        tick.tick().await;
        let now = Utc::now();
        while at <= now {
            for p in traffic.call(at) {
                schedule.push(p);
            }
            at += step;
        }
        let due = schedule.due(now);
        post(&client, &url, &keys, due, &mut tally).await;
        if report.elapsed() >= Duration::from_secs(30) {
            report = Instant::now();
            eprintln!(
                "demo: {} events posted, {} accepted, {} rejected",
                tally.events, tally.accepted, tally.rejected
            );
        }
        if duration > 0 && started.elapsed() >= Duration::from_secs(duration) {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // The calls still in flight complete at once, so every call posted is whole.
    let rest = schedule.due(DateTime::<Utc>::MAX_UTC);
    post(&client, &url, &keys, rest, &mut tally).await;
    Ok(json!({
        "mode": "demo",
        "calls": traffic.calls,
        "events": tally.events,
        "accepted": tally.accepted,
        "rejected": tally.rejected,
        "requests_accepted": tally.requests_accepted,
        "failed_posts": tally.failed_posts,
        "backfill_events": backfill_events,
        "seconds": seconds,
        "events_per_sec": tally.accepted as f64 / seconds,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic(n: usize) -> Vec<Vec<Post>> {
        let tenants = ["a", "b", "c"].map(String::from).to_vec();
        let mut t = Traffic::new(tenants, "t".into(), 42);
        let at = Utc::now();
        (0..n).map(|_| t.call(at)).collect()
    }

    fn share(calls: &[Vec<Post>], what: impl Fn(&[Post]) -> bool) -> f64 {
        calls.iter().filter(|c| what(c)).count() as f64 / calls.len() as f64
    }

    #[test]
    fn a_few_percent_fail_a_few_come_back_first_and_one_in_a_hundred_never_does() {
        let calls = traffic(20_000);
        let unanswered = share(&calls, |c| c.len() == 1);
        let failed = share(&calls, |c| {
            c.len() == 2 && c[1].event.get("error").is_some()
        });
        let response_first = share(&calls, |c| c.len() == 2 && c[0].due > c[1].due);
        assert!((0.005..0.015).contains(&unanswered), "{unanswered}");
        assert!((0.02..0.04).contains(&failed), "{failed}");
        assert!((0.03..0.05).contains(&response_first), "{response_first}");
    }

    #[test]
    fn latencies_have_a_long_right_tail() {
        let mut latencies: Vec<u64> = traffic(20_000)
            .iter()
            .filter(|c| c.len() == 2)
            .map(|c| c[1].event["latency_ms"].as_u64().unwrap())
            .collect();
        latencies.sort_unstable();
        let q = |p: f64| latencies[(p * (latencies.len() - 1) as f64) as usize] as f64;
        assert!((500.0..1500.0).contains(&q(0.5)), "p50 {}", q(0.5));
        assert!(q(0.99) > 3.0 * q(0.5), "p50 {} p99 {}", q(0.5), q(0.99));
    }

    #[test]
    fn every_response_matches_its_request_and_returns_when_its_latency_says() {
        for call in traffic(2_000).iter().filter(|c| c.len() == 2) {
            let (req, resp) = (&call[0].event, &call[1].event);
            assert_eq!(req["request_id"], resp["request_id"]);
            assert_eq!(req["tenant_id"], resp["tenant_id"]);
            let sent: DateTime<Utc> = req["timestamp"].as_str().unwrap().parse().unwrap();
            let back: DateTime<Utc> = resp["timestamp"].as_str().unwrap().parse().unwrap();
            let latency = resp["latency_ms"].as_i64().unwrap();
            assert_eq!((back - sent).num_milliseconds(), latency);
            assert_eq!(call[1].due, back);
        }
    }

    #[test]
    fn every_tenant_gets_traffic_and_the_first_the_most() {
        let calls = traffic(10_000);
        let of = |t: usize| share(&calls, |c| c[0].tenant == t);
        assert!(of(0) > of(1) && of(1) > of(2) && of(2) > 0.1);
    }

    #[test]
    fn the_schedule_hands_out_posts_in_time_order_once() {
        let mut s = Schedule::default();
        let now = Utc::now();
        for ms in [30, 10, 20] {
            s.push(Post {
                due: now + TimeDelta::milliseconds(ms),
                tenant: 0,
                event: json!(ms),
            });
        }
        let first = s.due(now + TimeDelta::milliseconds(25));
        assert_eq!(
            first.iter().map(|p| p.event.clone()).collect::<Vec<_>>(),
            [json!(10), json!(20)]
        );
        assert_eq!(s.due(now + TimeDelta::milliseconds(40)).len(), 1);
        assert!(s.due(now + TimeDelta::seconds(9)).is_empty());
    }
}
