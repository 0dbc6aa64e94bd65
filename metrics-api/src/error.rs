//! Every way a query can fail, the status it gets and the JSON body that explains it.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use infra::keys::AuthError;
use metrics_core::error::ErrorBody;
use metrics_core::validation::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: each bad parameter named.
    #[error("{} invalid", if .0.len() == 1 { "1 parameter is".to_owned() } else { format!("{} parameters are", .0.len()) })]
    BadParameters(Vec<FieldError>),
    /// 401: no key, or not a live one.
    #[error(transparent)]
    Unauthenticated(AuthError),
    /// 403: a key asking for another tenant's data.
    #[error("this API key belongs to another tenant than {0:?}")]
    Forbidden(String),
    /// 408: the query ran into the statement timeout; Postgres cancelled it.
    #[error("the query took longer than the request timeout and was cancelled; ask for a shorter range or a coarser granularity")]
    QueryTimeout,
    /// 503: the database did not answer.
    #[error("the database is unavailable; retry later")]
    Unavailable(String),
    #[error("no such endpoint")]
    NotFound,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unavailable(e) => ApiError::Unavailable(e.to_string()),
            other => ApiError::Unauthenticated(other),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if infra::db::is_cancelled(&e) {
            return ApiError::QueryTimeout;
        }
        ApiError::Unavailable(e.to_string())
    }
}

impl From<infra::db::RowError> for ApiError {
    fn from(e: infra::db::RowError) -> Self {
        match e {
            infra::db::RowError::Database(e) => e.into(),
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadParameters(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::QueryTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadParameters(_) => "invalid_parameters",
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::QueryTimeout => "query_timeout",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Unavailable(detail) = &self {
            tracing::error!(%detail, "query failed");
        }
        let status = self.status();
        let mut body = ErrorBody::new(self.code(), self.to_string());
        let mut response = match self {
            ApiError::BadParameters(fields) => {
                body = body.with_fields(fields);
                (status, Json(body)).into_response()
            }
            _ => (status, Json(body)).into_response(),
        };
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
