//! Service level objectives of the caller's tenant, their budgets and burn rates.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DurationRound, TimeDelta, Utc};
use infra::slos::{Status, StoredSlo};
use metrics_core::slo::SloSpec;
use metrics_core::tiles::Level;
use serde::Serialize;
use utoipa::ToSchema;

use crate::alerts::{body, caller, path_id};
use crate::error::ApiError;
use crate::routes::{AppState, QueryErrors};

/// An objective just created; `webhook_secret` only when it is the tenant's first rule or
/// objective.
#[derive(Debug, Serialize, ToSchema)]
pub struct Created {
    slo: StoredSlo,
    /// The key every webhook of this tenant is signed with, shown this once.
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_secret: Option<String>,
}

/// Creates an objective of the caller's tenant, with its page and ticket burn-rate alerts.
#[utoipa::path(post, path = "/v1/slos", tag = "slos",
    params(("tenant_id" = Option<String>, Query, description = "The tenant, without API keys.")),
    request_body = SloSpec,
    responses((status = 201, description = "The objective, with its `id`", body = Created), QueryErrors)
)]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let tenant = caller(&state, &headers, &params).await?;
    let spec: SloSpec = body(&bytes)?;
    let allowed = &state.webhook_allowed;
    let slo = spec
        .check(|url| metrics_core::alerts::webhook_allowed(url, allowed))
        .map_err(ApiError::BadParameters)?;
    let (slo, webhook_secret) =
        state.checked(infra::slos::create_slo(&state.pool, &tenant, &slo).await)?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            slo,
            webhook_secret,
        }),
    )
        .into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Slos {
    slos: Vec<Status>,
}

/// The caller's tenant's objectives, each with its budget, burn rates and alerts.
#[utoipa::path(get, path = "/v1/slos", tag = "slos",
    params(("tenant_id" = Option<String>, Query, description = "The tenant, without API keys.")),
    responses((status = 200, description = "The objectives", body = Slos), QueryErrors)
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let tenant = caller(&state, &headers, &params).await?;
    let stored = state.checked(infra::slos::slos(&state.pool, &tenant).await)?;
    let mut slos = Vec::with_capacity(stored.len());
    for slo in stored {
        slos.push(status(&state, slo).await?);
    }
    Ok(Json(Slos { slos }).into_response())
}

/// One objective: the share of its 30-day error budget left, its burn rates over 5 minutes,
/// 30 minutes, 1 hour, 6 hours and 30 days, and its alerts' states.
#[utoipa::path(get, path = "/v1/slos/{id}", tag = "slos",
    params(("id" = i64, Path, description = "The objective's id"),
           ("tenant_id" = Option<String>, Query, description = "The tenant, without API keys.")),
    responses((status = 200, description = "The objective and its budget", body = Status),
              (status = 404, description = "No such objective of this tenant"), QueryErrors)
)]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = path_id(&id, "must be an objective's id, a whole number")?;
    let tenant = caller(&state, &headers, &params).await?;
    let slo = state.checked(infra::slos::slo(&state.pool, &tenant, id).await)?;
    let slo = slo.ok_or(ApiError::NotFound)?;
    Ok(Json(status(&state, slo).await?).into_response())
}

/// Stops an objective of the caller's tenant and its alerts; their past transitions stay.
#[utoipa::path(delete, path = "/v1/slos/{id}", tag = "slos",
    params(("id" = i64, Path, description = "The objective's id"),
           ("tenant_id" = Option<String>, Query, description = "The tenant, without API keys.")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such objective of this tenant"), QueryErrors)
)]
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = path_id(&id, "must be an objective's id, a whole number")?;
    let tenant = caller(&state, &headers, &params).await?;
    if state.checked(infra::slos::delete_slo(&state.pool, &tenant, id).await)? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound)
    }
}

/// The objective's budget and burn rates up to the end of the current minute.
async fn status(state: &AppState, slo: StoredSlo) -> Result<Status, ApiError> {
    let minute = TimeDelta::minutes(1);
    let now = Utc::now();
    let at = now.duration_trunc(minute).unwrap_or(now) + minute;
    let coarsest = state.checked(state.rollups.readable(&state.pool, Level::Day).await)?;
    state.checked(infra::slos::status(&state.pool, slo, at, coarsest).await)
}
