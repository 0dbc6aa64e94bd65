//! Calls fed straight to the engine, for the tests of what a flush stores.

use chrono::{DateTime, TimeDelta, Utc};
use metrics_core::events::{Event, RequestEvent, ResponseEvent};
use metrics_processor::domain::offsets::{Input, Source};

/// Record `offset` of partition 0 of `input`.
pub fn source(input: Input, offset: i64) -> Source {
    Source {
        input,
        partition: 0,
        offset,
    }
}

/// A request of `tenant` to gpt-4o on /chat, stamped `at`, with 100 prompt tokens.
pub fn request(tenant: &str, id: &str, at: DateTime<Utc>) -> Event {
    Event::Request(RequestEvent {
        request_id: id.parse().unwrap(),
        tenant_id: tenant.parse().unwrap(),
        route: "/chat".parse().unwrap(),
        model: "gpt-4o".parse().unwrap(),
        provider: None,
        timestamp: at,
        prompt_tokens: 100,
        user_id_hash: None,
        metadata: None,
    })
}

/// Its response 400 ms later, stamped with `tenant`: completed, 20 completion tokens.
pub fn response(tenant: &str, id: &str, at: DateTime<Utc>) -> Event {
    Event::Response(ResponseEvent {
        request_id: id.parse().unwrap(),
        timestamp: at + TimeDelta::milliseconds(400),
        latency_ms: 400,
        completion_tokens: 20,
        finish_reason: "stop".into(),
        error: None,
        time_to_first_token_ms: None,
        cached_prompt_tokens: None,
        cache_creation_tokens: None,
        reasoning_tokens: None,
        error_type: None,
        response_model: None,
        tenant_id: Some(tenant.parse().unwrap()),
    })
}
