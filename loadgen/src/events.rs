//! Realistic-looking events: a few tenants, routes and models.

use chrono::Utc;
use serde_json::{json, Value};

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const ROUTES: [&str; 4] = ["/chat", "/summarize", "/search", "/classify"];
const MODELS: [&str; 4] = [
    "gpt-4o",
    "gpt-4o-mini",
    "claude-3-5-sonnet",
    "llama-3.1-70b",
];

/// The `i`-th request event of a run tagged `run`.
pub fn request(run: &str, i: usize) -> Value {
    json!({
        "request_id": format!("{run}-{i}"),
        "tenant_id": TENANTS[i % TENANTS.len()],
        "route": ROUTES[i % ROUTES.len()],
        "model": MODELS[(i / 3) % MODELS.len()],
        "timestamp": Utc::now().to_rfc3339(),
        "prompt_tokens": 200 + (i * 37) % 1800,
    })
}

/// The response matching [`request`].
pub fn response(run: &str, i: usize) -> Value {
    json!({
        "request_id": format!("{run}-{i}"),
        "timestamp": Utc::now().to_rfc3339(),
        "latency_ms": 300 + (i * 53) % 4000,
        "completion_tokens": 50 + (i * 29) % 900,
        "finish_reason": "stop",
        // What the ingestion API writes with API keys: the key's tenant, the request's.
        "tenant_id": TENANTS[i % TENANTS.len()],
    })
}

/// Request and response events alternating, each tagged with its `type` for the batch API.
pub fn typed(run: &str, i: usize) -> Value {
    let (mut event, kind) = if i.is_multiple_of(2) {
        (request(run, i / 2), "request")
    } else {
        (response(run, i / 2), "response")
    };
    event["type"] = json!(kind);
    event
}

/// A tag that keeps request ids of different runs apart.
pub fn run_tag() -> String {
    format!("lg{}", Utc::now().timestamp_millis())
}
