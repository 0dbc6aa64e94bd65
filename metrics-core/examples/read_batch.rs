//! How long reading a batch body and writing each event's record JSON takes, in-process:
//! the part of the batch endpoint's work that is StreamLens's own, without HTTP or Kafka,
//! so it can be compared across changes on a noisy machine.
//!
//! `cargo run --release -p metrics-core --example read_batch`

use std::time::Instant;

use chrono::Utc;
use metrics_core::validation::{parse_event_array, Limits};
use serde_json::json;

const EVENTS: usize = 1_000;
const BATCHES: usize = 300;

fn main() {
    let now = Utc::now();
    // Requests and responses alternating, shaped as the load generator's.
    let items: Vec<_> = (0..EVENTS)
        .map(|i| {
            let id = format!("lg1733580000000-{}", i / 2);
            if i % 2 == 0 {
                json!({"type": "request", "request_id": id, "tenant_id": "acme", "route": "/chat",
                       "model": "gpt-4o", "timestamp": now.to_rfc3339(), "prompt_tokens": 200 + i})
            } else {
                json!({"type": "response", "request_id": id, "timestamp": now.to_rfc3339(),
                       "latency_ms": 300 + i, "completion_tokens": 50, "finish_reason": "stop",
                       "tenant_id": "acme"})
            }
        })
        .collect();
    let body = serde_json::to_vec(&items).expect("events serialize");
    let limits = Limits::default();
    for round in 1..=5 {
        let (mut read, mut written) = (0.0, 0.0);
        for _ in 0..BATCHES {
            let started = Instant::now();
            let mut events = Vec::with_capacity(EVENTS);
            let count = parse_event_array(&body, now, &limits, |_, verdict| {
                events.push(verdict.expect("every event is valid"));
            });
            assert_eq!(count, Some(EVENTS));
            read += started.elapsed().as_secs_f64();
            let started = Instant::now();
            let bytes: usize = events.iter().map(|e| e.to_json().len()).sum();
            written += started.elapsed().as_secs_f64();
            assert!(bytes > 0);
        }
        let per_event = |seconds: f64| seconds * 1e9 / (EVENTS * BATCHES) as f64;
        println!(
            "round {round}: reading {:.0} ns an event, writing its JSON {:.0} ns",
            per_event(read),
            per_event(written)
        );
    }
}
