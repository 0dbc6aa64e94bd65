//! The HTTP surface: which path goes to which handler, and what wraps every request.

mod events;
mod health;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use common::http::{measure_and_bound, Guard};
use common::kafka::Topics;
use common::validation::Limits;

use common::keys::Auth;

use crate::error::ApiError;
use crate::limit::RateLimiter;
use crate::publisher::Publisher;
use crate::telemetry::Metrics;

pub use events::{Accepted, BatchReport, ItemFailure, ItemRejection};

/// What handlers need; cloned per request.
#[derive(Clone)]
pub struct AppState {
    pub publisher: Arc<dyn Publisher>,
    pub metrics: Arc<Metrics>,
    pub config: Arc<HttpConfig>,
    pub auth: Auth,
    /// Per API key; `None` when keys are off or the limit is 0.
    pub limiter: Option<Arc<RateLimiter>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The settings that shape request handling.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub topics: Topics,
    pub limits: Limits,
    pub max_body_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_batch_items: usize,
    pub request_timeout: Duration,
}

pub fn router(state: AppState) -> Router {
    let batch_limit = DefaultBodyLimit::max(state.config.max_batch_bytes);
    let app = Router::new()
        .route("/v1/llm/request", post(events::post_request))
        .route("/v1/llm/response", post(events::post_response))
        .route("/v1/llm/batch", post(events::post_batch).layer(batch_limit))
        .route("/health", get(health::live))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(health::openapi))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            Guard {
                metrics: state.metrics.http.clone(),
                timeout: state.config.request_timeout,
            },
            measure_and_bound,
        ));
    common::http::with_request_ids(app).with_state(state)
}
