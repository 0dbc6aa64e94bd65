//! `POST /v1/llm/request`, `POST /v1/llm/response` and `POST /v1/llm/batch`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use chrono::Utc;
use metrics_core::error::FieldErrorBody;
use metrics_core::events::{Event, EventKind, RequestEvent, ResponseEvent};
use metrics_core::ids::TenantId;
use metrics_core::validation::{self, FieldError};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use crate::error::ApiError;
use crate::limit::RateLimiter;
use crate::metrics::{KindLabels, ReasonLabels};
use crate::publisher::{PublishError, Record};
use infra::http::REQUEST_ID_HEADER;

/// The answer to an accepted single event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    #[schema(example = "accepted")]
    pub status: String,
    pub request_id: String,
}

/// The answer to a batch: how many items were written, and which were not and why.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct BatchReport {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub accepted: usize,
    /// Items that failed validation; not written.
    pub rejected: Vec<ItemRejection>,
    /// Valid items the broker did not acknowledge; not written, safe to send again.
    pub failed: Vec<ItemFailure>,
}

/// An invalid item: its 0-based position (for NDJSON, among non-blank lines) and each
/// offending field.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ItemRejection {
    pub index: usize,
    pub fields: Vec<FieldErrorBody>,
}

/// A valid item the broker did not acknowledge.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ItemFailure {
    pub index: usize,
    pub request_id: String,
    pub reason: String,
}

// The document's view of a batch item. Items are read by `validation::parse_event_bytes`,
// which names every offending field rather than stopping at the first.
/// An event of either kind, with `type` saying which.
#[derive(Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
#[allow(dead_code)]
enum BatchItem {
    Request(RequestEvent),
    Response(ResponseEvent),
}

/// The per-item report, or an error for a body that is not a batch at all.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum BatchRefusal {
    Report(BatchReport),
    Error(metrics_core::error::ErrorBody),
}

/// The error answers of every event endpoint but the ones a batch words its own way.
const REFUSALS: [(u16, &str); 6] = [
    (401, "No API key, or not a live one"),
    (403, "The event names another tenant than the key's"),
    (
        408,
        "The request took longer than `HTTP_REQUEST_TIMEOUT_MS`",
    ),
    (413, "The body is over the size limit"),
    (415, "Not `application/json`"),
    (
        429,
        "Over the key's rate limit; `Retry-After` says when to try again",
    ),
];

/// The error answers of the single-event endpoints.
pub(super) struct EventErrors;

impl utoipa::IntoResponses for EventErrors {
    fn responses() -> std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
    > {
        let mut all = infra::openapi::error_responses(&REFUSALS);
        all.append(&mut infra::openapi::error_responses(&[
            (
                400,
                "Malformed JSON or invalid fields; `fields` names each one",
            ),
            (
                503,
                "The broker did not acknowledge the event: not written, safe to send again",
            ),
        ]));
        all
    }
}

/// The error answers a batch shares with the single-event endpoints.
pub(super) struct BatchErrors;

impl utoipa::IntoResponses for BatchErrors {
    fn responses() -> std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
    > {
        infra::openapi::error_responses(&REFUSALS)
    }
}

/// Record that an application called a model.
#[utoipa::path(
    post,
    path = "/v1/llm/request",
    tag = "events",
    request_body(content = RequestEvent, content_type = "application/json"),
    responses(
        (status = 202, description = "Written to `llm.requests` and acknowledged by the broker", body = Accepted),
        EventErrors,
    )
)]
pub async fn post_request(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    single(state, headers, body, EventKind::Request).await
}

/// Record that a model call returned or failed.
#[utoipa::path(
    post,
    path = "/v1/llm/response",
    tag = "events",
    request_body(content = ResponseEvent, content_type = "application/json"),
    responses(
        (status = 202, description = "Written to `llm.responses` and acknowledged by the broker", body = Accepted),
        EventErrors,
    )
)]
pub async fn post_response(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    single(state, headers, body, EventKind::Response).await
}

async fn single(
    state: AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    kind: EventKind,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let tenant = state.caller(&headers).await?;
    state.limit(&headers, 1)?;
    if content_type(&headers) != Some("application/json") {
        return Err(ApiError::UnsupportedMediaType {
            expected: "application/json",
        });
    }
    let bytes = body.map_err(|r| ApiError::from_body(r, state.config.max_body_bytes))?;
    let mut event = parse_single(&state, &bytes, kind)?;
    if bind_tenant(&mut event, tenant.as_ref()).is_err() {
        return Err(ApiError::Forbidden(
            event.tenant().map(ToString::to_string).unwrap_or_default(),
        ));
    }
    let record = state.record(event, trace_id(&headers));
    match state.publish(std::slice::from_ref(&record)).await.pop() {
        Some(Ok(())) => Ok((
            StatusCode::ACCEPTED,
            Json(Accepted {
                status: "accepted".into(),
                request_id: record.key,
            }),
        )),
        Some(Err(e)) => Err(ApiError::Unavailable(e)),
        None => Err(ApiError::Unavailable(PublishError::Refused(
            "no result".into(),
        ))),
    }
}

/// Record many events of both kinds at once.
///
/// A JSON array (`application/json`) or one event per line (`application/x-ndjson`). Each
/// item carries `"type": "request"` or `"response"` and is validated on its own. 202: every
/// valid item was written, `rejected` lists the invalid ones. 400: no item was valid.
/// 503: `failed` lists valid items the broker did not acknowledge.
#[utoipa::path(
    post,
    path = "/v1/llm/batch",
    tag = "events",
    request_body(content(
        (Vec<BatchItem> = "application/json"),
        (String = "application/x-ndjson"),
    )),
    responses(
        (status = 202, description = "Every valid item written", body = BatchReport),
        (status = 400, description = "No item valid (the report), or the body is not a batch (an error)", body = BatchRefusal),
        (status = 503, description = "Some valid items were not written (`failed` lists them), or none could be", body = BatchRefusal),
        BatchErrors,
    )
)]
pub async fn post_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<BatchReport>), ApiError> {
    let ndjson = match content_type(&headers) {
        Some("application/json") => false,
        Some("application/x-ndjson" | "application/ndjson" | "application/jsonl") => true,
        _ => {
            return Err(ApiError::UnsupportedMediaType {
                expected: "application/json (an array of events) or application/x-ndjson",
            })
        }
    };
    let bytes = body.map_err(|r| ApiError::from_body(r, state.config.max_batch_bytes))?;
    let tenant = state.caller(&headers).await?;
    // A key with no event of its rate left is refused before the batch is read and its records
    // made, the work a key flooding the API over its rate would otherwise still cost.
    state.has_room(&headers)?;
    let (now, limits) = (Utc::now(), &state.config.limits);
    let trace = trace_id(&headers);
    let mut sorted = Sorted::default();
    // An array of well-typed events, which is what a batch mostly is, is read in one pass,
    // each item made a record as it is read; any other body item by item, each a raw slice of
    // it, so that every offending field of every item is named.
    let at_once = (!ndjson)
        .then(|| {
            validation::parse_event_array(&bytes, now, limits, |kind, verdict| {
                sorted.add(&state, tenant.as_ref(), &trace, verdict, || kind.as_str());
            })
        })
        .flatten();
    let count = match at_once {
        Some(count) => count,
        None => {
            let items: Vec<&[u8]> = if ndjson {
                bytes
                    .split(|b| *b == b'\n')
                    .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
                    .collect()
            } else {
                let array: Vec<&RawValue> = serde_json::from_slice(&bytes).map_err(|e| {
                    ApiError::MalformedJson(format!("{e} (a batch is a JSON array of events)"))
                })?;
                array.into_iter().map(|raw| raw.get().as_bytes()).collect()
            };
            // What the one-pass reading made of the items before the one it could not read.
            sorted = Sorted::default();
            for item in &items {
                let verdict = validation::parse_event_bytes(item, now, limits);
                sorted.add(&state, tenant.as_ref(), &trace, verdict, || {
                    declared_kind(item)
                });
            }
            items.len()
        }
    };
    if count == 0 {
        let empty = FieldError::new("body", "a batch needs at least one event");
        return Err(ApiError::Invalid(vec![empty]));
    }
    let max = state.config.max_batch_items;
    if count > max {
        return Err(ApiError::TooManyItems { max, got: count });
    }

    state.limit(&headers, count)?;

    let Sorted {
        records,
        positions,
        rejected,
    } = sorted;
    let mut report = BatchReport::default();
    for (index, kind, fields) in rejected {
        state
            .metrics
            .events_rejected
            .get_or_create(&KindLabels { kind })
            .inc();
        report.rejected.push(ItemRejection {
            index,
            fields: fields.into_iter().map(Into::into).collect(),
        });
    }

    let results = state.publish(&records).await;
    for ((index, record), result) in positions.into_iter().zip(&records).zip(results) {
        match result {
            Ok(()) => report.accepted += 1,
            Err(e) => report.failed.push(ItemFailure {
                index,
                request_id: record.key.clone(),
                reason: e.to_string(),
            }),
        }
    }

    let status = if !report.failed.is_empty() {
        report.error = Some("broker_unavailable".into());
        report.message = Some(format!(
            "{} events were not written; send them again (duplicates are counted once)",
            report.failed.len()
        ));
        StatusCode::SERVICE_UNAVAILABLE
    } else if report.accepted == 0 {
        report.error = Some("invalid_event".into());
        report.message = Some("no event in the batch is valid".into());
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(report)))
}

/// A batch's items as they are read: the records to write with their positions in the
/// batch, and the rejected items with their kind and offending fields.
#[derive(Default)]
struct Sorted {
    records: Vec<Record>,
    positions: Vec<usize>,
    rejected: Vec<(usize, &'static str, Vec<FieldError>)>,
}

impl Sorted {
    /// The next item: a record when it is valid and the caller's tenant's, a rejection
    /// otherwise (`kind` names it for the metric).
    fn add(
        &mut self,
        state: &AppState,
        tenant: Option<&TenantId>,
        trace: &Option<Arc<str>>,
        verdict: validation::Verdict,
        kind: impl FnOnce() -> &'static str,
    ) {
        let index = self.records.len() + self.rejected.len();
        let bound = verdict.and_then(|mut event| match bind_tenant(&mut event, tenant) {
            Ok(()) => Ok(event),
            Err(e) => Err(vec![e]),
        });
        match bound {
            Ok(event) => {
                self.records.push(state.record(event, trace.clone()));
                self.positions.push(index);
            }
            Err(fields) => self.rejected.push((index, kind(), fields)),
        }
    }
}

/// The `type` a rejected batch item claims, for the rejection metric.
fn declared_kind(item: &[u8]) -> &'static str {
    let value: Option<Value> = serde_json::from_slice(item).ok();
    match value
        .as_ref()
        .and_then(|v| v.get("type"))
        .and_then(Value::as_str)
    {
        Some("request") => "request",
        Some("response") => "response",
        _ => "unknown",
    }
}

/// A single event's body: read straight into the typed event, which is what well-formed
/// events take; a body that does not read that way (malformed, or a field of the wrong type)
/// goes through the field-by-field reading, which names every failing field.
fn parse_single(state: &AppState, bytes: &[u8], kind: EventKind) -> Result<Event, ApiError> {
    let typed = match kind {
        EventKind::Request => serde_json::from_slice(bytes).ok().map(Event::Request),
        EventKind::Response => serde_json::from_slice(bytes).ok().map(Event::Response),
    };
    let Some(event) = typed else {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
        return parse(state, &value, kind).map_err(ApiError::Invalid);
    };
    validation::check_event(event, Utc::now(), &state.config.limits).map_err(|errors| {
        rejected(state, kind);
        ApiError::Invalid(errors)
    })
}

fn rejected(state: &AppState, kind: EventKind) {
    let labels = KindLabels {
        kind: kind.as_str(),
    };
    state.metrics.events_rejected.get_or_create(&labels).inc();
}

fn parse(state: &AppState, value: &Value, kind: EventKind) -> Result<Event, Vec<FieldError>> {
    let (now, limits) = (Utc::now(), &state.config.limits);
    let parsed = match kind {
        EventKind::Request => validation::parse_request(value, now, limits).map(Event::Request),
        EventKind::Response => validation::parse_response(value, now, limits).map(Event::Response),
    };
    if parsed.is_err() {
        rejected(state, kind);
    }
    parsed
}

/// Holds an event to the tenant of the caller's key: a request must name it, a response is
/// stamped with it (whatever the body said). Without keys, events stay as they are.
fn bind_tenant(event: &mut Event, tenant: Option<&TenantId>) -> Result<(), FieldError> {
    let Some(tenant) = tenant else {
        return Ok(());
    };
    match event {
        Event::Request(r) if r.tenant_id != *tenant => Err(FieldError::new(
            "tenant_id",
            "belongs to another tenant than this API key's",
        )),
        Event::Request(_) => Ok(()),
        Event::Response(r) => {
            r.tenant_id = Some(tenant.clone());
            Ok(())
        }
    }
}

/// The media type without parameters such as `charset`.
pub(super) fn content_type(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or_default().trim())
}

/// The request's id, for the `x-request-id` header of every record it writes.
pub(super) fn trace_id(headers: &HeaderMap) -> Option<Arc<str>> {
    headers.get(REQUEST_ID_HEADER)?.to_str().ok().map(Arc::from)
}

impl AppState {
    /// The tenant of the caller's key (`None` without keys).
    pub(super) async fn caller(&self, headers: &HeaderMap) -> Result<Option<TenantId>, ApiError> {
        self.auth
            .tenant(infra::keys::Auth::presented(headers))
            .await
            .map_err(|e| match e {
                infra::keys::AuthError::Unavailable(e) => {
                    tracing::error!(error = %e, "cannot check an API key");
                    ApiError::KeysUnavailable
                }
                other => ApiError::Unauthenticated(other.to_string()),
            })
    }

    /// Takes `events` from the rate of the caller's key (checked by [`AppState::caller`]).
    pub(super) fn limit(&self, headers: &HeaderMap, events: usize) -> Result<(), ApiError> {
        self.rate(headers, |limiter, key, now| limiter.take(key, events, now))
    }

    /// Whether the caller's key has at least one event of its rate left, taking none.
    pub(super) fn has_room(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        self.rate(headers, RateLimiter::has_room)
    }

    /// Asks the rate limiter about the caller's key, when there are both.
    fn rate(
        &self,
        headers: &HeaderMap,
        ask: impl FnOnce(&RateLimiter, &str, Instant) -> Result<(), std::time::Duration>,
    ) -> Result<(), ApiError> {
        match (&self.limiter, infra::keys::Auth::presented(headers)) {
            (Some(limiter), Some(key)) => ask(limiter, key, Instant::now())
                .map_err(|retry_after| ApiError::RateLimited { retry_after }),
            _ => Ok(()),
        }
    }

    /// The event as the record to write: its JSON, keyed by its `request_id`.
    pub(super) fn record(&self, event: Event, trace_id: Option<Arc<str>>) -> Record {
        let (kind, payload) = (event.kind(), event.to_json());
        Record {
            kind,
            key: event.into_request_id().into_string(),
            payload,
            trace_id,
        }
    }

    /// Publishes and records the outcome in the metrics.
    pub(super) async fn publish(&self, records: &[Record]) -> Vec<Result<(), PublishError>> {
        let started = Instant::now();
        let results = self.publisher.publish(records).await;
        self.metrics
            .produce_duration
            .observe(started.elapsed().as_secs_f64());
        // Tallied here and added once per label: a batch holds thousands of records.
        let (mut requests, mut responses) = (0, 0);
        let mut errors: Vec<(&'static str, u64)> = Vec::new();
        let mut first_error = None;
        for (record, result) in records.iter().zip(&results) {
            match result {
                Ok(()) if record.kind == EventKind::Request => requests += 1,
                Ok(()) => responses += 1,
                Err(e) => {
                    match errors.iter_mut().find(|(reason, _)| *reason == e.reason()) {
                        Some((_, n)) => *n += 1,
                        None => errors.push((e.reason(), 1)),
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        let m = &self.metrics;
        m.accepted_requests.inc_by(requests);
        m.accepted_responses.inc_by(responses);
        for (reason, n) in errors {
            m.produce_errors
                .get_or_create(&ReasonLabels { reason })
                .inc_by(n);
        }
        if let Some(e) = first_error {
            let failed = records.len() - (requests + responses) as usize;
            tracing::warn!(error = %e, failed, "events not written");
        }
        results
    }
}
