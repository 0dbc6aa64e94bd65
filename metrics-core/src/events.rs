//! Wire types for the two events an LLM application posts.
//!
//! Field names follow the original StreamLens so existing clients keep working. The names an
//! event carries are validated types ([`crate::ids`]); the other fields' rules are declared
//! here and checked by [`crate::validation`], which is the one way in from untrusted input.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use validator::Validate;

use crate::ids::{ErrorType, Model, Provider, RequestId, Route, TenantId};
use crate::validation::small_object;

/// The largest token count a single event may report.
pub const MAX_TOKENS: u64 = 100_000_000;

/// Posted when an application calls a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Validate, ToSchema)]
pub struct RequestEvent {
    /// Join key with the response; also the Kafka key.
    #[schema(value_type = String, min_length = 1, max_length = 128, pattern = r"^[A-Za-z0-9._:-]+$")]
    pub request_id: RequestId,
    /// No '|' or control characters (also for route and model).
    #[schema(value_type = String, min_length = 1, max_length = 255)]
    pub tenant_id: TenantId,
    #[schema(value_type = String, min_length = 1, max_length = 255)]
    pub route: Route,
    #[schema(value_type = String, min_length = 1, max_length = 255)]
    pub model: Model,
    /// Who serves the model (`openai`, `anthropic`, ...); each window counts its calls per
    /// provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 255)]
    pub provider: Option<Provider>,
    /// RFC 3339; within `EVENT_MAX_FUTURE_SKEW_SECS` ahead of the server clock and
    /// `EVENT_MAX_AGE_SECS` behind it.
    #[serde(
        deserialize_with = "crate::validation::rfc3339",
        serialize_with = "crate::validation::write_rfc3339"
    )]
    pub timestamp: DateTime<Utc>,
    /// Includes cached prompt tokens.
    #[validate(range(max = MAX_TOKENS, message = "must be at most 100000000"))]
    #[schema(maximum = 100_000_000)]
    pub prompt_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[validate(length(min = 1, max = 128, message = "must be 1 to 128 characters"))]
    #[schema(min_length = 1, max_length = 128)]
    pub user_id_hash: Option<String>,
    /// At most 4096 bytes of JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[validate(custom(function = small_object))]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// Posted when the model call returns or fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Validate, ToSchema)]
pub struct ResponseEvent {
    #[schema(value_type = String, min_length = 1, max_length = 128, pattern = r"^[A-Za-z0-9._:-]+$")]
    pub request_id: RequestId,
    /// RFC 3339, with the same bounds as the request's.
    #[serde(
        deserialize_with = "crate::validation::rfc3339",
        serialize_with = "crate::validation::write_rfc3339"
    )]
    pub timestamp: DateTime<Utc>,
    /// At most `MAX_LATENCY_MS` (default 3600000).
    pub latency_ms: u64,
    #[validate(range(max = MAX_TOKENS, message = "must be at most 100000000"))]
    #[schema(maximum = 100_000_000)]
    pub completion_tokens: u64,
    #[validate(length(min = 1, max = 64, message = "must be 1 to 64 characters"))]
    #[schema(min_length = 1, max_length = 64)]
    pub finish_reason: String,
    /// A non-empty error marks the call as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[validate(length(max = 1024, message = "must be at most 1024 characters"))]
    #[schema(max_length = 1024)]
    pub error: Option<String>,
    /// The class of the failure (`timeout`, `rate_limit`, `500`): each window counts its
    /// errors per type. Also marks the call as failed; a failure without a type counts as
    /// `_OTHER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 255)]
    pub error_type: Option<ErrorType>,
    /// At most `latency_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_first_token_ms: Option<u64>,
    /// Prompt tokens served from the provider's cache. Following the OpenTelemetry GenAI
    /// convention they are part of the request's `prompt_tokens` and priced at the cached rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[validate(range(max = MAX_TOKENS, message = "must be at most 100000000"))]
    #[schema(maximum = 100_000_000)]
    pub cached_prompt_tokens: Option<u64>,
    /// Prompt tokens written to the provider's cache by this call; like cached ones, part of
    /// the request's `prompt_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[validate(range(max = MAX_TOKENS, message = "must be at most 100000000"))]
    #[schema(maximum = 100_000_000)]
    pub cache_creation_tokens: Option<u64>,
    /// Output tokens the model spent reasoning; part of `completion_tokens`, so at most that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[validate(range(max = MAX_TOKENS, message = "must be at most 100000000"))]
    #[schema(maximum = 100_000_000)]
    pub reasoning_tokens: Option<u64>,
    /// The model that answered, when the provider names it differently from the one asked
    /// for (a dated snapshot of an alias, say). Carried to the topic; windows stay keyed by
    /// the requested model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 255)]
    pub response_model: Option<Model>,
    /// The tenant the response belongs to. With API keys the ingestion API sets it to the
    /// key's tenant, whatever the body said, and the processor pairs a response only with a
    /// request of the same tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 255)]
    pub tenant_id: Option<TenantId>,
}

impl ResponseEvent {
    pub fn is_error(&self) -> bool {
        self.error.as_deref().is_some_and(|e| !e.is_empty()) || self.error_type.is_some()
    }

    /// The failure's type, as the window counts it: `None` for a call that did not fail.
    pub fn failure_type(&self) -> Option<&str> {
        match &self.error_type {
            Some(t) => Some(t),
            None => self.is_error().then_some(crate::aggregate::OTHER),
        }
    }
}

/// Either kind of event, as items of a batch carry them (`"type": "request" | "response"`).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Request(RequestEvent),
    Response(ResponseEvent),
}

impl Event {
    pub fn request_id(&self) -> &RequestId {
        match self {
            Event::Request(r) => &r.request_id,
            Event::Response(r) => &r.request_id,
        }
    }

    /// The event's `request_id`, taken out of it.
    pub fn into_request_id(self) -> RequestId {
        match self {
            Event::Request(r) => r.request_id,
            Event::Response(r) => r.request_id,
        }
    }

    /// The tenant the event names: always for a request, when stamped for a response.
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Event::Request(r) => Some(&r.tenant_id),
            Event::Response(r) => r.tenant_id.as_ref(),
        }
    }

    pub fn kind(&self) -> EventKind {
        match self {
            Event::Request(_) => EventKind::Request,
            Event::Response(_) => EventKind::Response,
        }
    }

    /// The JSON written to Kafka: the validated event, without any unknown input fields.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let written = match self {
            Event::Request(r) => serde_json::to_writer(&mut out, r),
            Event::Response(r) => serde_json::to_writer(&mut out, r),
        };
        // Serializing plain structs of strings, numbers and JSON maps cannot fail.
        written.expect("events always serialize");
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Request,
    Response,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Request => "request",
            EventKind::Response => "response",
        }
    }
}
