//! The JSON error shape shared by every StreamLens HTTP API.
//!
//! ```json
//! {"error": "invalid_event", "message": "2 fields are invalid",
//!  "fields": [{"field": "prompt_tokens", "reason": "must not be negative"}]}
//! ```
//! `error` is a stable machine-readable code, `message` is for people, `fields` names each
//! offending field (or query parameter) when there are any.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::validation::FieldError;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// A stable code, such as `invalid_event`, `malformed_json`, `payload_too_large`,
    /// `unsupported_media_type`, `unauthorized`, `rate_limited`, `broker_unavailable`.
    pub error: String,
    pub message: String,
    /// Each offending field or query parameter, when there are any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldErrorBody>,
}

/// One offending field and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = FieldError)]
pub struct FieldErrorBody {
    pub field: String,
    pub reason: String,
}

impl From<FieldError> for FieldErrorBody {
    fn from(e: FieldError) -> Self {
        Self {
            field: e.field,
            reason: e.reason,
        }
    }
}

impl ErrorBody {
    pub fn new(error: &str, message: impl Into<String>) -> Self {
        Self {
            error: error.to_owned(),
            message: message.into(),
            fields: Vec::new(),
        }
    }

    pub fn with_fields(mut self, fields: Vec<FieldError>) -> Self {
        self.fields = fields.into_iter().map(Into::into).collect();
        self
    }
}
