//! The HTTP surface: which path goes to which handler, and what wraps every request.

mod events;
mod health;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::HeaderName;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use common::kafka::Topics;
use common::validation::Limits;
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use common::keys::Auth;

use crate::error::ApiError;
use crate::limit::RateLimiter;
use crate::publisher::Publisher;
use crate::telemetry::{HttpLabels, Metrics};

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

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    let batch_limit = DefaultBodyLimit::max(state.config.max_batch_bytes);
    Router::new()
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
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
                    let id = req
                        .extensions()
                        .get::<RequestId>()
                        .and_then(|id| id.header_value().to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
                }))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(middleware::from_fn_with_state(state.clone(), measure_and_bound)),
        )
        .with_state(state)
}

/// Counts and times every request, and answers a JSON 408 when one takes longer than the
/// configured request timeout (a slow client or a stuck dependency).
async fn measure_and_bound(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = match tokio::time::timeout(state.config.request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => (
            axum::http::StatusCode::REQUEST_TIMEOUT,
            axum::Json(common::error::ErrorBody::new(
                "request_timeout",
                "the request took longer than the server's request timeout",
            )),
        )
            .into_response(),
    };
    let labels = HttpLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    state.metrics.http_requests.get_or_create(&labels).inc();
    state
        .metrics
        .http_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}
