//! Every way a request can fail, the status it gets and the JSON body that explains it.

use axum::extract::rejection::BytesRejection;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use metrics_core::error::ErrorBody;
use metrics_core::validation::FieldError;

use crate::publisher::PublishError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 415: the body is not in a format this endpoint reads.
    #[error("Content-Type must be {expected}")]
    UnsupportedMediaType { expected: &'static str },
    /// 413: the body is larger than the configured limit.
    #[error("the body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// 413: a batch with more items than allowed.
    #[error("a batch may hold at most {max} events, this one has {got}")]
    TooManyItems { max: usize, got: usize },
    /// 400: the body could not be read or is not JSON.
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// 400: a body on the OpenTelemetry path that is no OTLP export request.
    #[error("{0}")]
    MalformedOtlp(String),
    /// 400: JSON, but fields are missing or wrong; each one is named.
    #[error("{} invalid", plural(.0.len()))]
    Invalid(Vec<FieldError>),
    /// 503: the broker did not acknowledge in time; nothing is claimed written.
    #[error("the event was not written: {0}; retry later")]
    Unavailable(PublishError),
    /// 401: no API key, or not a live one.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: an event of another tenant than the API key's.
    #[error("this API key belongs to another tenant than {0:?}")]
    Forbidden(String),
    /// 429: the key sent more than its rate; retry after the given time.
    #[error("this API key is over its rate limit; retry in {} ms", .retry_after.as_millis())]
    RateLimited { retry_after: std::time::Duration },
    /// 503: the key store did not answer.
    #[error("cannot check the API key; retry later")]
    KeysUnavailable,
    /// 404
    #[error("no such endpoint")]
    NotFound,
    /// 405
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
}

fn plural(n: usize) -> String {
    if n == 1 {
        "1 field is".to_owned()
    } else {
        format!("{n} fields are")
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } | ApiError::TooManyItems { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::MalformedJson(_) | ApiError::MalformedOtlp(_) | ApiError::Invalid(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unavailable(_) | ApiError::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::UnsupportedMediaType { .. } => "unsupported_media_type",
            ApiError::PayloadTooLarge { .. } | ApiError::TooManyItems { .. } => "payload_too_large",
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::MalformedOtlp(_) => "malformed_otlp",
            ApiError::Invalid(_) => "invalid_event",
            ApiError::Unavailable(_) => "broker_unavailable",
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::KeysUnavailable => "unavailable",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
        }
    }

    /// Maps axum's body-reading failures: a body over the limit is a 413, anything else an
    /// unreadable body.
    pub fn from_body(rejection: BytesRejection, limit: usize) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::MalformedJson(rejection.body_text())
        }
    }

    pub fn body(&self) -> ErrorBody {
        let body = ErrorBody::new(self.code(), self.to_string());
        match self {
            ApiError::Invalid(fields) => body.with_fields(fields.clone()),
            _ => body,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Json(self.body());
        match &self {
            ApiError::RateLimited { retry_after } => {
                // Whole seconds, rounded up, as Retry-After wants them.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                (
                    status,
                    [(header::RETRY_AFTER, secs.max(1).to_string())],
                    body,
                )
                    .into_response()
            }
            ApiError::Unauthenticated(_) => (
                status,
                [(header::WWW_AUTHENTICATE, "Bearer".to_owned())],
                body,
            )
                .into_response(),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => {
                (status, [(header::RETRY_AFTER, "1".to_owned())], body).into_response()
            }
            _ => (status, body).into_response(),
        }
    }
}
