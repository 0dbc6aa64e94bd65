//! The HTTP surface: the queries, health, metrics and the OpenAPI document.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use common::error::ErrorBody;
use common::http::{measure_and_bound, Guard};
use common::keys::Auth;
use serde_json::json;
use sqlx::PgPool;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::dashboard;
use crate::error::ApiError;
use crate::query::{self, QueryLimits};
use crate::rollup;
use crate::store;
use crate::telemetry::Metrics;

/// The service's OpenAPI document, kept beside the crate and embedded at build time.
pub const OPENAPI: &str = include_str!("../openapi.json");

#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub auth: Auth,
    pub limits: QueryLimits,
    pub metrics: Arc<Metrics>,
    pub request_timeout: Duration,
}

impl AppState {
    /// A database result, with failures counted.
    fn checked<T, E: Into<ApiError>>(&self, result: Result<T, E>) -> Result<T, ApiError> {
        result.map_err(|e| {
            self.metrics.database_errors.inc();
            e.into()
        })
    }
}

pub fn router(state: AppState, cors_origins: &[String]) -> Router {
    let mut app = Router::new()
        .route("/v1/metrics", get(metrics))
        .route("/v1/summary", get(summary))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(prometheus))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .merge(dashboard::routes())
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(
            Guard {
                metrics: state.metrics.http.clone(),
                timeout: state.request_timeout,
            },
            measure_and_bound,
        ));
    app = common::http::with_request_ids(app);
    if !cors_origins.is_empty() {
        let origins = if cors_origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(
                cors_origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok()),
            )
        };
        app = app.layer(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::HeaderName::from_static("x-api-key"),
                ])
                .max_age(Duration::from_secs(3600)),
        );
    }
    app.with_state(state)
}

/// The tenant a query is for: the key's, and `tenant_id` must agree with it when given.
async fn tenant(
    state: &AppState,
    headers: &HeaderMap,
    asked: Option<&str>,
) -> Result<String, ApiError> {
    match (state.auth.tenant(Auth::presented(headers)).await?, asked) {
        (Some(own), Some(asked)) if own != asked => Err(ApiError::Forbidden(asked.to_owned())),
        (Some(own), _) => Ok(own),
        (None, Some(asked)) => Ok(asked.to_owned()),
        // The parser requires tenant_id when auth is disabled.
        (None, None) => Err(ApiError::BadParameters(vec![
            common::validation::FieldError::new("tenant_id", "is required"),
        ])),
    }
}

/// The answer of `GET /v1/metrics`, in the original shape plus the granularity.
#[derive(Debug, serde::Serialize)]
struct MetricsAnswer {
    metrics: Vec<rollup::MetricsItem>,
    count: usize,
    granularity: &'static str,
}

fn keyed(state: &AppState) -> bool {
    matches!(state.auth, Auth::Keys(_))
}

async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let q =
        query::metrics(&params, keyed(&state), &state.limits).map_err(ApiError::BadParameters)?;
    let tenant = tenant(&state, &headers, q.tenant.as_deref()).await?;
    let items = if q.is_plain() {
        state.checked(store::latest(&state.pool, &tenant, &q).await)?
    } else {
        let (from, to) = q.range(Utc::now());
        let windows = state.checked(
            store::windows(
                &state.pool,
                &tenant,
                q.route.as_deref(),
                q.model.as_deref(),
                from,
                to,
            )
            .await,
        )?;
        state.metrics.windows_read.inc_by(windows.len() as u64);
        let rolled = state.checked(rollup::roll_up(windows, q.granularity, q.group_by))?;
        rollup::items(
            &tenant,
            rolled,
            q.granularity,
            usize::try_from(q.limit).unwrap_or(usize::MAX),
        )
    };
    Ok(Json(MetricsAnswer {
        count: items.len(),
        metrics: items,
        granularity: q.granularity.name(),
    })
    .into_response())
}

async fn summary(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let q = query::summary(&params, keyed(&state), &state.limits, Utc::now())
        .map_err(ApiError::BadParameters)?;
    let tenant = tenant(&state, &headers, q.tenant.as_deref()).await?;
    let windows =
        state.checked(store::windows(&state.pool, &tenant, None, None, q.from, q.to).await)?;
    state.metrics.windows_read.inc_by(windows.len() as u64);
    let summary = state.checked(rollup::summarize(&tenant, q.from, q.to, windows, q.top))?;
    Ok(Json(summary).into_response())
}

/// Readiness: the database answers.
async fn ready(State(state): State<AppState>) -> Response {
    match store::ping(&state.pool).await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => {
            // The driver's text stays in the log: a probe's answer names what is down.
            tracing::warn!(error = %e, "not ready: the database does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(ErrorBody::new("not_ready", "the database does not answer")),
            )
                .into_response()
        }
    }
}

async fn prometheus(State(state): State<AppState>) -> Response {
    common::http::openmetrics(state.metrics.registry())
}
