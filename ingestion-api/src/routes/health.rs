//! Liveness, readiness, Prometheus metrics and the OpenAPI document.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use metrics_core::error::ErrorBody;
use serde_json::json;

use super::AppState;

/// Liveness: the process answers. It does not touch the broker, so a broker outage does not
/// get healthy API processes restarted.
#[utoipa::path(get, path = "/health", tag = "operations", security(()),
    responses((status = 200, description = "The process is up")))]
pub async fn live() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Readiness: the broker answers and both input topics exist, and with API keys on, the
/// database holding them answers.
#[utoipa::path(get, path = "/ready", tag = "operations", security(()), responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "Not ready; `message` says what is down", body = ErrorBody),
))]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let mut check = state.publisher.ready().await;
    if let (Ok(()), infra::keys::Auth::Keys(keys)) = (&check, &state.auth) {
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

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    infra::http::openmetrics(state.metrics.registry())
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI document, generated from the handlers")))]
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::document(),
    )
}
