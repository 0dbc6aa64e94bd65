//! The HTTP surface: which path goes to which handler, and what wraps every request.

mod events;
mod health;
mod traces;

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use infra::http::{Edge, EdgeService};
use infra::kafka::Topics;
use metrics_core::validation::Limits;
use tower::Layer;
use tower_http::decompression::RequestDecompressionLayer;

use infra::keys::Auth;

use crate::error::ApiError;
use crate::limit::RateLimiter;
use crate::metrics::Metrics;
use crate::publisher::Publisher;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

pub use events::{Accepted, BatchReport, ItemFailure, ItemRejection};
pub use traces::grpc::service as otlp_grpc;

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

const API_KEYS: infra::openapi::ApiKeys = infra::openapi::ApiKeys;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "StreamLens ingestion API",
        description = "Accepts LLM telemetry events. 202 means the Kafka broker acknowledged the \
            record (acks=all); 503 means it was not written and may be sent again: a repeated \
            event is counted once."
    ),
    components(schemas(metrics_core::error::ErrorBody)),
    modifiers(&API_KEYS)
)]
struct Document;

/// Every route, each with its part of the OpenAPI document: a route exists only through
/// here, so none can be missing from the document.
fn routes(max_batch_bytes: usize) -> OpenApiRouter<AppState> {
    let batch_limit = DefaultBodyLimit::max(max_batch_bytes);
    OpenApiRouter::with_openapi(Document::openapi())
        .routes(routes!(events::post_request))
        .routes(routes!(events::post_response))
        .routes(routes!(events::post_batch).layer(batch_limit))
        // OTLP exporters may gzip; the batch limit holds for the body once inflated.
        .routes(
            routes!(traces::post_traces)
                .layer::<_, Infallible>(batch_limit)
                .layer::<_, Infallible>(RequestDecompressionLayer::new().gzip(true)),
        )
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics))
        .routes(routes!(health::openapi))
}

/// The service's OpenAPI document as served, built once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| infra::openapi::to_json(routes(0).into_openapi()))
}

/// The service: the router, and around it the request's id, timeout, panic answer and
/// metrics (see [`Edge`]) and the default body limit.
pub fn router(state: AppState) -> Service {
    let (app, document) = routes(state.config.max_batch_bytes).split_for_parts();
    let edge = Edge::new(
        state.metrics.http.clone(),
        state.config.request_timeout,
        document.paths.paths.keys().map(String::as_str),
    );
    let body_limit = DefaultBodyLimit::max(state.config.max_body_bytes);
    let app = app
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state);
    edge.layer(body_limit.layer(app))
}

/// What [`router`] makes: a tower service, served with `axum::serve`.
pub type Service = EdgeService<<DefaultBodyLimit as Layer<Router>>::Service>;
