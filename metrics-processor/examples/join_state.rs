//! Measures the join state's memory: bytes per pending request, with 1,000,000 requests
//! waiting for their responses. Run with `cargo run --release -p metrics-processor --example
//! join_state`; it prints one JSON line.

use chrono::{DateTime, TimeDelta, Utc};
use metrics_core::events::RequestEvent;
use metrics_processor::domain::join::{Joiner, Sourced};
use metrics_processor::domain::offsets::{Input, Source};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Resident memory of this process, from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let base: DateTime<Utc> = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
    let mut joiner = Joiner::new(TimeDelta::minutes(5));
    let before = rss_bytes();
    for i in 0..n {
        // A UUID-sized id, as clients typically send, known to the join by its tenant as the
        // processor holds it by default (JOIN_SCOPE=tenant).
        let id = format!("0b6f8a3c-1d2e-4f50-8a9b-{i:012}");
        let key = format!("acme|{id}");
        let request = RequestEvent {
            request_id: id.parse().expect("a valid id"),
            tenant_id: "acme".parse().expect("a valid tenant"),
            route: "/v1/chat/completions".parse().expect("a valid route"),
            model: "gpt-4o-mini".parse().expect("a valid model"),
            provider: None,
            timestamp: base + TimeDelta::milliseconds(i as i64),
            prompt_tokens: 512,
            user_id_hash: None,
            metadata: None,
        };
        let source = Source {
            input: Input::Requests,
            partition: (i % 6) as i32,
            offset: i as i64,
        };
        joiner.on_request(
            &key,
            Sourced {
                source,
                value: request,
            },
        );
    }
    let after = rss_bytes();
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    println!(
        "{}",
        serde_json::json!({"pending_requests": joiner.pending_requests(), "rss_before": before, "rss_after": after, "bytes_per_pending_request": per})
    );
}
