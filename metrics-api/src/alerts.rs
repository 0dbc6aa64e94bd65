//! Alert rules and the transitions they made, for the caller's tenant.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use infra::alerts::{AlertEvent, StoredRule};
use metrics_core::alerts::RuleSpec;
use metrics_core::ids::TenantId;
use metrics_core::validation::FieldError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::routes::{tenant, AppState, QueryErrors};

/// The tenant a rule request acts for: the key's, or `tenant_id` without keys.
pub(crate) async fn caller(
    state: &AppState,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<String, ApiError> {
    let asked = params.get("tenant_id").map(String::as_str);
    if let Some(Err(why)) = asked.map(TenantId::parse) {
        return Err(ApiError::BadParameters(vec![FieldError::new(
            "tenant_id",
            why.0,
        )]));
    }
    tenant(state, headers, asked).await
}

/// An id from the path, read here rather than by the extractor so that a bad one gets the
/// JSON error every 400 has.
pub(crate) fn path_id(id: &str, why: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::BadParameters(vec![FieldError::new("id", why)]))
}

/// A rule just created; `webhook_secret` only with the tenant's first rule.
#[derive(Debug, Serialize, ToSchema)]
pub struct Created {
    rule: StoredRule,
    /// The key every webhook of this tenant is signed with (`X-StreamLens-Signature:
    /// sha256=<hex HMAC-SHA256 of the body>`), shown this once: with the tenant's first rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_secret: Option<String>,
}

/// Reads a JSON body into `T`, naming the field serde could not read where it says which.
pub(crate) fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let text = e.to_string();
        let field = ["missing field `", "unknown field `"]
            .iter()
            .find_map(|p| text.strip_prefix(p))
            .and_then(|rest| rest.split('`').next())
            .unwrap_or("body");
        ApiError::BadParameters(vec![FieldError::new(field, text.clone())])
    })
}

/// Creates an alert rule of the caller's tenant.
#[utoipa::path(post, path = "/v1/alerts/rules", tag = "alerts",
    params(("tenant_id" = Option<String>, Query, description = "The tenant, without API keys.")),
    request_body = RuleSpec,
    responses((status = 201, description = "The rule, with its `id`", body = Created), QueryErrors)
)]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let tenant = caller(&state, &headers, &params).await?;
    let spec: RuleSpec = body(&bytes)?;
    let allowed = &state.webhook_allowed;
    let rule = spec
        .check(|url| metrics_core::alerts::webhook_allowed(url, allowed))
        .map_err(ApiError::BadParameters)?;
    let (rule, webhook_secret) =
        state.checked(infra::alerts::create_rule(&state.pool, &tenant, &rule).await)?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            rule,
            webhook_secret,
        }),
    )
        .into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Rules {
    rules: Vec<StoredRule>,
}

/// The caller's tenant's rules, each with its state.
#[utoipa::path(get, path = "/v1/alerts/rules", tag = "alerts",
    params(("tenant_id" = Option<String>, Query, description = "The tenant, without API keys.")),
    responses((status = 200, description = "The rules", body = Rules), QueryErrors)
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let tenant = caller(&state, &headers, &params).await?;
    let rules = state.checked(infra::alerts::rules(&state.pool, &tenant).await)?;
    Ok(Json(Rules { rules }).into_response())
}

/// Stops a rule of the caller's tenant; its past transitions stay.
#[utoipa::path(delete, path = "/v1/alerts/rules/{id}", tag = "alerts",
    params(("id" = i64, Path, description = "The rule's id"),
           ("tenant_id" = Option<String>, Query, description = "The tenant, without API keys.")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such rule of this tenant"), QueryErrors)
)]
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = path_id(&id, "must be a rule's id, a whole number")?;
    let tenant = caller(&state, &headers, &params).await?;
    if state.checked(infra::alerts::delete_rule(&state.pool, &tenant, id).await)? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound)
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Alerts {
    alerts: Vec<AlertEvent>,
    count: usize,
}

/// The caller's tenant's alert transitions, newest first (the last 7 days by default).
#[utoipa::path(get, path = "/v1/alerts", tag = "alerts",
    params(
        ("tenant_id" = Option<String>, Query, description = "The tenant, without API keys."),
        ("state" = Option<String>, Query, pattern = "^(firing|resolved)$", description = "Only these transitions."),
        ("from" = Option<DateTime<Utc>>, Query, description = "Transitions made from this time on (RFC 3339)."),
        ("to" = Option<DateTime<Utc>>, Query, description = "…and before this one."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "At most this many (100)."),
    ),
    responses((status = 200, description = "The transitions", body = Alerts), QueryErrors)
)]
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let q = crate::query::alerts(&params, Utc::now()).map_err(ApiError::BadParameters)?;
    let tenant = caller(&state, &headers, &params).await?;
    let alerts = state.checked(
        infra::alerts::events(&state.pool, &tenant, q.state, q.from, q.to, q.limit).await,
    )?;
    Ok(Json(Alerts {
        count: alerts.len(),
        alerts,
    })
    .into_response())
}
