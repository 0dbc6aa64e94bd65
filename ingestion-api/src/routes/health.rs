//! Liveness, readiness, Prometheus metrics and the OpenAPI document.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::error::ErrorBody;
use serde_json::json;

use super::AppState;

/// The service's OpenAPI document, kept beside the crate and embedded at build time.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Liveness: the process answers. It does not touch the broker, so a broker outage does not
/// get healthy API processes restarted.
pub async fn live() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Readiness: the broker answers and both input topics exist, and with API keys on, the
/// database holding them answers.
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let mut check = state.publisher.ready().await;
    if let (Ok(()), common::keys::Auth::Keys(keys)) = (&check, &state.auth) {
        if let Err(e) = sqlx::query("SELECT 1").execute(keys.pool()).await {
            tracing::warn!(error = %e, "not ready: the API keys' database does not answer");
            check = Err("the database holding the API keys does not answer".into());
        }
    }
    match check {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody::new("not_ready", reason)),
        )
            .into_response(),
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    common::http::openmetrics(state.metrics.registry())
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
