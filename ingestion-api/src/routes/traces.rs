//! `POST /v1/traces`: OTLP/HTTP, so that an OpenTelemetry-instrumented application needs
//! nothing but its exporter pointed here. The same keys, tenants, limits and durability as
//! the other paths: the export succeeds only once the broker acknowledged every call in it.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::events::{content_type, trace_id};
use super::AppState;
use crate::error::ApiError;
use crate::metrics::OutcomeLabels;
use crate::otlp::{mapping, Encoding};
use metrics_core::ids::TenantId;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

pub mod grpc;

/// Maps one export for the caller (`tenant`, from `headers`' key), holds it to the key's rate
/// and writes its calls; what it refused, each with why. Shared by OTLP/HTTP and OTLP/gRPC.
async fn take(
    state: &AppState,
    headers: &HeaderMap,
    tenant: Option<TenantId>,
    export: &ExportTraceServiceRequest,
) -> Result<Vec<String>, ApiError> {
    let mapped = mapping::map(export, tenant.as_ref(), Utc::now(), &state.config.limits);
    let spans = &state.metrics.spans;
    for (outcome, n) in [
        ("skipped", mapped.skipped),
        ("rejected", mapped.rejected.len()),
    ] {
        spans
            .get_or_create(&OutcomeLabels { outcome })
            .inc_by(n as u64);
    }
    // The batch path's bound on what one body may hand the broker: two events a call.
    let max = state.config.max_batch_items;
    if mapped.events.len() > max {
        let got = mapped.events.len();
        return Err(ApiError::TooManyItems { max, got });
    }
    state.limit(headers, mapped.events.len())?;

    let trace = trace_id(headers);
    let records: Vec<_> = mapped
        .events
        .into_iter()
        .map(|event| state.record(event, trace.clone()))
        .collect();
    if let Some(Err(e)) = state
        .publish(&records)
        .await
        .into_iter()
        .find(Result::is_err)
    {
        // The exporter sends the whole export again; what was written is counted once.
        return Err(ApiError::Unavailable(e));
    }
    let calls = (records.len() / 2) as u64;
    spans
        .get_or_create(&OutcomeLabels {
            outcome: "accepted",
        })
        .inc_by(calls);
    Ok(mapped.rejected)
}

/// Takes an OTLP trace export (protobuf or JSON, optionally gzip). Each span with
/// `gen_ai.operation.name` becomes a call (a request at its start, a response at its end);
/// other spans are skipped. Spans that cannot be calls are refused in `partial_success`.
#[utoipa::path(
    post,
    path = "/v1/traces",
    tag = "opentelemetry",
    request_body(
        description = "An OTLP ExportTraceServiceRequest",
        content(
            (Vec<u8> = "application/x-protobuf"),
            (Object = "application/json"),
        ),
    ),
    responses(
        (status = 200, description = "Every call in it was written; an ExportTraceServiceResponse in the request's encoding, with `partial_success` when spans were refused"),
        (status = 400, description = "The body is not an OTLP export request", body = metrics_core::error::ErrorBody),
        (status = 401, description = "No API key, or not a live one", body = metrics_core::error::ErrorBody),
        (status = 413, description = "The body (after gzip) is over the batch limit, or its calls make more than MAX_BATCH_ITEMS events (two a call)", body = metrics_core::error::ErrorBody),
        (status = 415, description = "Neither application/x-protobuf nor application/json", body = metrics_core::error::ErrorBody),
        (status = 429, description = "Over the key's rate; retry after Retry-After", body = metrics_core::error::ErrorBody),
        (status = 503, description = "Not all calls were written; retry after Retry-After (a repeated call is counted once)", body = metrics_core::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn post_traces(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Some(encoding) = Encoding::of(content_type(&headers)) else {
        return Err(ApiError::UnsupportedMediaType {
            expected: "application/x-protobuf or application/json (OTLP/HTTP)",
        });
    };
    let bytes = body.map_err(|r| ApiError::from_body(r, state.config.max_batch_bytes))?;
    let tenant = state.caller(&headers).await?;
    let export = encoding.decode(&bytes).map_err(ApiError::MalformedOtlp)?;
    let rejected = take(&state, &headers, tenant, &export).await?;
    let body = encoding.answer(&rejected);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response())
}
