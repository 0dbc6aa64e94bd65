//! The HTTP surface: the queries, health, metrics and the OpenAPI document.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use chrono::Utc;
use infra::http::{Edge, EdgeService};
use infra::keys::Auth;
use infra::rollups::Kept;
use metrics_core::error::ErrorBody;
use metrics_core::pricing::PricingTable;
use metrics_core::tiles::Level;
use serde_json::json;
use sqlx::PgPool;
use tower::util::Either;
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::alerts;
use crate::dashboard;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::query::{self, Pricing, QueryLimits};
use crate::rollup::{self, MetricsAnswer};
use crate::slos;
use crate::store;

#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub auth: Auth,
    pub limits: QueryLimits,
    pub metrics: Arc<Metrics>,
    pub request_timeout: Duration,
    pub rollups: Arc<infra::rollups::Readable>,
    /// The price table of `pricing=current` answers (PRICING_FILE over the built-in prices).
    pub pricing: Arc<PricingTable>,
    /// URL prefixes alert webhooks may go to (`ALERT_WEBHOOK_ALLOWED`).
    pub webhook_allowed: Arc<Vec<String>>,
}

impl AppState {
    /// Today's prices when an answer is asked at them.
    fn prices(&self, pricing: Pricing) -> Option<rollup::AtPrices<'_>> {
        (pricing == Pricing::Current).then(|| rollup::AtPrices {
            table: &self.pricing,
            at: Utc::now(),
        })
    }

    /// A database result, with failures counted.
    pub(crate) fn checked<T, E: Into<ApiError>>(
        &self,
        result: Result<T, E>,
    ) -> Result<T, ApiError> {
        result.map_err(|e| {
            self.metrics.database_errors.inc();
            e.into()
        })
    }
}

const API_KEYS: infra::openapi::ApiKeys = infra::openapi::ApiKeys;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "StreamLens metrics API",
        description = "Per-minute LLM call metrics per tenant, route and model, and roll-ups of \
            them. Percentiles of roll-ups are merged from stored HdrHistograms, never averaged."
    ),
    components(schemas(ErrorBody)),
    modifiers(&API_KEYS)
)]
struct Document;

/// Every route, each with its part of the OpenAPI document: a route exists only through
/// here, so none can be missing from the document.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(Document::openapi())
        .routes(routes!(metrics))
        .routes(routes!(summary))
        .routes(routes!(alerts::create, alerts::list))
        .routes(routes!(alerts::delete))
        .routes(routes!(alerts::events))
        .routes(routes!(slos::create, slos::list))
        .routes(routes!(slos::get, slos::delete))
        .routes(routes!(live))
        .routes(routes!(ready))
        .routes(routes!(prometheus))
        .routes(routes!(openapi))
        .routes(routes!(dashboard::page))
        .routes(routes!(dashboard::script))
        .routes(routes!(dashboard::style))
}

/// The service's OpenAPI document as served, built once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| infra::openapi::to_json(routes().into_openapi()))
}

/// The service: the router, around it the request's id, timeout, panic answer and metrics
/// (see [`Edge`]), and outside those the CORS answers when origins are configured.
pub fn router(state: AppState, cors_origins: &[String]) -> Service {
    let (app, document) = routes().split_for_parts();
    let edge = Edge::new(
        state.metrics.http.clone(),
        state.request_timeout,
        document.paths.paths.keys().map(String::as_str),
    );
    let app = app
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state);
    let cors = (!cors_origins.is_empty()).then(|| {
        let origins = if cors_origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(
                cors_origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok()),
            )
        };
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET])
            .allow_headers([
                header::AUTHORIZATION,
                header::HeaderName::from_static("x-api-key"),
            ])
            .max_age(Duration::from_secs(3600))
    });
    tower::ServiceBuilder::new()
        .option_layer(cors)
        .layer(edge)
        .service(app)
}

/// What [`router`] makes: a tower service, served with `axum::serve`.
pub type Service = Either<Cors<EdgeService<Router>>, EdgeService<Router>>;

/// The tenant a query is for: the key's, and `tenant_id` must agree with it when given.
pub(crate) async fn tenant(
    state: &AppState,
    headers: &HeaderMap,
    asked: Option<&str>,
) -> Result<String, ApiError> {
    match (state.auth.tenant(Auth::presented(headers)).await?, asked) {
        (Some(own), Some(asked)) if own != asked => Err(ApiError::Forbidden(asked.to_owned())),
        (Some(own), _) => Ok(own.into_string()),
        (None, Some(asked)) => Ok(asked.to_owned()),
        // The parser requires tenant_id when auth is disabled.
        (None, None) => Err(ApiError::BadParameters(vec![
            metrics_core::validation::FieldError::new("tenant_id", "is required"),
        ])),
    }
}

fn keyed(state: &AppState) -> bool {
    matches!(state.auth, Auth::Keys(_))
}

/// The error answers of both queries.
pub(crate) struct QueryErrors;

impl utoipa::IntoResponses for QueryErrors {
    fn responses() -> std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
    > {
        infra::openapi::error_responses(&[
            (400, "A bad parameter; `fields` names each one"),
            (401, "No API key, or not a live one"),
            (403, "The key belongs to another tenant"),
            (408, "The query took longer than `HTTP_REQUEST_TIMEOUT_MS`"),
            (503, "The database is unavailable"),
        ])
    }
}

/// Windows of a tenant, newest first, or roll-ups of them.
#[utoipa::path(get, path = "/v1/metrics", tag = "queries",
    params(
        ("tenant_id" = Option<String>, Query, max_length = 255,
            description = "The tenant. Required without keys; with a key, optional and must be the key's tenant."),
        ("route" = Option<String>, Query, max_length = 255, description = "Only this route."),
        ("model" = Option<String>, Query, max_length = 255, description = "Only this model."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000,
            description = "Rows at most (default 60, at most `QUERY_MAX_LIMIT`)."),
        ("from" = Option<DateTime<Utc>>, Query, description = "Start of the range (inclusive), RFC 3339."),
        ("to" = Option<DateTime<Utc>>, Query, description = "End of the range (exclusive), RFC 3339."),
        ("granularity" = Option<String>, Query, pattern = "^(1m|5m|1h|1d)$",
            description = "Bucket width: `1m` (default), `5m`, `1h`, `1d`. Roll-ups without `from` read the last `limit` buckets."),
        ("group_by" = Option<String>, Query, pattern = "^(route,model|route|model|tenant)$",
            description = "What a roll-up keeps apart below the tenant: `route,model` (default), `route`, `model`, `tenant`."),
        ("pricing" = Option<String>, Query, pattern = "^(recorded|current)$",
            description = "Costs at the prices recorded when the calls were counted (`recorded`, default) or at today's prices of the service's price table (`current`)."),
    ),
    responses((status = 200, description = "The windows or buckets", body = MetricsAnswer), QueryErrors)
)]
async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let q =
        query::metrics(&params, keyed(&state), &state.limits).map_err(ApiError::BadParameters)?;
    let tenant = tenant(&state, &headers, q.tenant.as_deref()).await?;
    let prices = state.prices(q.pricing);
    let items = if q.is_plain() {
        state.checked(store::latest(&state.pool, &tenant, &q, prices).await)?
    } else {
        let (from, to) = q.range(Utc::now());
        let coarsest = state.checked(
            state
                .rollups
                .readable(&state.pool, q.granularity.coarsest())
                .await,
        )?;
        let windows = state.checked(
            store::windows(
                &state.pool,
                &tenant,
                q.route.as_deref(),
                q.model.as_deref(),
                from,
                to,
                coarsest,
                // What the answer keeps apart; at today's prices each model is costed anew.
                Kept {
                    routes: q.group_by.route,
                    models: q.group_by.model || prices.is_some(),
                },
            )
            .await,
        )?;
        state.metrics.windows_read.inc_by(windows.len() as u64);
        let rolled = state.checked(rollup::roll_up(windows, q.granularity, q.group_by, prices))?;
        rollup::items(
            &tenant,
            rolled,
            q.granularity,
            usize::try_from(q.limit).unwrap_or(usize::MAX),
        )
    };
    let answer = MetricsAnswer {
        count: items.len(),
        metrics: items,
        granularity: q.granularity.name(),
    };
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        answer.to_json(),
    )
        .into_response())
}

/// Totals and the top models and routes of a tenant over a range (default: the last 24 hours).
#[utoipa::path(get, path = "/v1/summary", tag = "queries",
    params(
        ("tenant_id" = Option<String>, Query, max_length = 255,
            description = "The tenant. Required without keys; with a key, optional and must be the key's tenant."),
        ("from" = Option<DateTime<Utc>>, Query, description = "Start of the range (inclusive), RFC 3339."),
        ("to" = Option<DateTime<Utc>>, Query, description = "End of the range (exclusive), RFC 3339."),
        ("top" = Option<i64>, Query, minimum = 1, maximum = 100,
            description = "How many models and routes to rank (default 5)."),
        ("pricing" = Option<String>, Query, pattern = "^(recorded|current)$",
            description = "Costs at the prices recorded when the calls were counted (`recorded`, default) or at today's prices of the service's price table (`current`)."),
    ),
    responses((status = 200, description = "The summary", body = rollup::Summary), QueryErrors)
)]
async fn summary(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let q = query::summary(&params, keyed(&state), &state.limits, Utc::now())
        .map_err(ApiError::BadParameters)?;
    let tenant = tenant(&state, &headers, q.tenant.as_deref()).await?;
    let prices = state.prices(q.pricing);
    let coarsest = state.checked(state.rollups.readable(&state.pool, Level::Day).await)?;
    let windows = state.checked(
        // The top models and routes need every series apart.
        store::windows(
            &state.pool,
            &tenant,
            None,
            None,
            q.from,
            q.to,
            coarsest,
            Kept::SERIES,
        )
        .await,
    )?;
    state.metrics.windows_read.inc_by(windows.len() as u64);
    let summary = state.checked(rollup::summarize(
        &tenant, q.from, q.to, windows, q.top, prices,
    ))?;
    Ok(Json(summary).into_response())
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations", security(()),
    responses((status = 200, description = "The process is up")))]
async fn live() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/ready", tag = "operations", security(()), responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "Not ready; `message` says what is down", body = ErrorBody),
))]
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

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
async fn prometheus(State(state): State<AppState>) -> Response {
    infra::http::openmetrics(state.metrics.registry())
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI document, generated from the handlers")))]
async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document())
}
