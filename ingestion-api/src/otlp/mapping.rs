//! OpenTelemetry GenAI spans to StreamLens calls. A span with `gen_ai.operation.name` is one
//! model call: a request event at its start and a response event at its end, both under the
//! request id `<trace id>-<span id>`. Other spans are skipped. The table of attributes is in
//! the README (OpenTelemetry).

use chrono::{DateTime, Utc};
use metrics_core::events::{Event, RequestEvent, ResponseEvent};
use metrics_core::ids::{ErrorType, Model, Provider, RequestId, Route, TenantId};
use metrics_core::validation::{self, Limits};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span};

/// What became of the spans of one export.
#[derive(Debug, Default)]
pub struct Mapped {
    /// Two events (request, response) per model call, validated.
    pub events: Vec<Event>,
    /// Spans that are no model call.
    pub skipped: usize,
    /// Model calls refused, each with why.
    pub rejected: Vec<String>,
}

/// Maps every span of an export. `tenant` is the API key's; without keys a span names its
/// tenant in `streamlens.tenant_id` (on the span or its resource).
pub fn map(
    export: &ExportTraceServiceRequest,
    tenant: Option<&TenantId>,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Mapped {
    let mut mapped = Mapped::default();
    for resource_spans in &export.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map_or(&[][..], |r| &r.attributes[..]);
        for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
            let attributes = Attributes {
                span: &span.attributes,
                resource,
            };
            if attributes.text("gen_ai.operation.name").is_none() {
                mapped.skipped += 1;
                continue;
            }
            let checked = call(span, &attributes, tenant).and_then(|(request, response)| {
                let request = validation::check_event(Event::Request(request), now, limits);
                let response = validation::check_event(Event::Response(response), now, limits);
                match (request, response) {
                    (Ok(request), Ok(response)) => Ok([request, response]),
                    (request, response) => {
                        let errors = [request.err(), response.err()];
                        let errors = errors.into_iter().flatten().flatten();
                        let reasons: Vec<String> = errors
                            .map(|e| format!("{}: {}", e.field, e.reason))
                            .collect();
                        Err(reasons.join("; "))
                    }
                }
            });
            match checked {
                Ok(events) => mapped.events.extend(events),
                Err(reason) => {
                    let id = hex(&span.span_id);
                    mapped.rejected.push(format!("span {id}: {reason}"));
                }
            }
        }
    }
    mapped
}

/// A span's attributes, and its resource's for the few that may stand on either.
struct Attributes<'a> {
    span: &'a [KeyValue],
    resource: &'a [KeyValue],
}

impl<'a> Attributes<'a> {
    fn value(&self, key: &str) -> Option<&'a any_value::Value> {
        find(self.span, key)
    }

    fn text(&self, key: &str) -> Option<&'a str> {
        match self.value(key)? {
            any_value::Value::StringValue(s) if !s.is_empty() => Some(s),
            _ => None,
        }
    }

    /// On the span, else on the resource.
    fn text_anywhere(&self, key: &str) -> Option<&'a str> {
        self.text(key).or_else(|| match find(self.resource, key)? {
            any_value::Value::StringValue(s) if !s.is_empty() => Some(s),
            _ => None,
        })
    }

    /// A token count: an integer, a whole double, or a string of digits, as instrumentations
    /// send them.
    fn count(&self, keys: &[&str]) -> Result<Option<u64>, String> {
        let Some((key, value)) = keys.iter().find_map(|k| Some((k, self.value(k)?))) else {
            return Ok(None);
        };
        let count = match value {
            any_value::Value::IntValue(n) => u64::try_from(*n).ok(),
            any_value::Value::DoubleValue(d) if d.fract() == 0.0 && *d >= 0.0 => Some(*d as u64),
            any_value::Value::StringValue(s) => s.parse().ok(),
            _ => None,
        };
        count
            .map(Some)
            .ok_or_else(|| format!("{key}: must be a non-negative integer"))
    }

    /// A duration in seconds, as the GenAI conventions give them.
    fn seconds(&self, key: &str) -> Option<f64> {
        match self.value(key)? {
            any_value::Value::DoubleValue(d) if d.is_finite() && *d >= 0.0 => Some(*d),
            any_value::Value::IntValue(n) if *n >= 0 => Some(*n as f64),
            _ => None,
        }
    }

    /// The first of a string array (or a lone string).
    fn first_text(&self, key: &str) -> Option<&'a str> {
        match self.value(key)? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            any_value::Value::ArrayValue(array) => {
                array.values.iter().find_map(|v| match v.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.as_str()),
                    _ => None,
                })
            }
            _ => None,
        }
        .filter(|s| !s.is_empty())
    }
}

fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|AnyValue { value }| value.as_ref())
}

/// Lower-case hex, into `out`. Runs twice per span: no formatting machinery, no allocation
/// per byte (the profile of the OTLP path had 11% of its time in a `format!` per byte here).
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    push_hex(&mut out, bytes);
    out
}

fn time(nanos: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
}

/// The call a GenAI span records, before the rules every event must pass.
fn call(
    span: &Span,
    attributes: &Attributes<'_>,
    tenant: Option<&TenantId>,
) -> Result<(RequestEvent, ResponseEvent), String> {
    let ids_valid = |id: &[u8], len| id.len() == len && id.iter().any(|b| *b != 0);
    if !ids_valid(&span.trace_id, 16) || !ids_valid(&span.span_id, 8) {
        return Err("trace_id and span_id must be 16 and 8 bytes, not all zero".into());
    }
    let mut id = String::with_capacity(49);
    push_hex(&mut id, &span.trace_id);
    id.push('-');
    push_hex(&mut id, &span.span_id);
    let request_id = RequestId::parse(id).map_err(|e| format!("request id: {e}"))?;
    let tenant_id = match tenant {
        Some(tenant) => tenant.clone(),
        None => {
            let named = attributes.text_anywhere("streamlens.tenant_id").ok_or(
                "streamlens.tenant_id: is required when the ingestion API runs without API keys",
            )?;
            TenantId::parse(named).map_err(|e| format!("streamlens.tenant_id: {e}"))?
        }
    };
    let route = attributes
        .text_anywhere("streamlens.route")
        .or_else(|| attributes.text_anywhere("service.name"))
        .ok_or("streamlens.route or the resource's service.name: is required")?;
    let route = Route::parse(route).map_err(|e| format!("route: {e}"))?;
    let model = attributes
        .text("gen_ai.request.model")
        .or_else(|| attributes.text("gen_ai.response.model"))
        .ok_or("gen_ai.request.model or gen_ai.response.model: is required")?;
    let model = Model::parse(model).map_err(|e| format!("gen_ai.request.model: {e}"))?;
    let response_model = attributes
        .text("gen_ai.response.model")
        .map(|m| Model::parse(m).map_err(|e| format!("gen_ai.response.model: {e}")))
        .transpose()?;
    let provider = ["gen_ai.provider.name", "gen_ai.system"]
        .into_iter()
        .find_map(|key| Some((key, attributes.text(key)?)))
        .map(|(key, p)| Provider::parse(p).map_err(|e| format!("{key}: {e}")))
        .transpose()?;
    if span.end_time_unix_nano < span.start_time_unix_nano || span.start_time_unix_nano == 0 {
        return Err("the span must start before it ends".into());
    }
    let latency_ns = span.end_time_unix_nano - span.start_time_unix_nano;
    let latency_ms = latency_ns / 1_000_000;
    let prompt_tokens = attributes
        .count(&["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"])?
        .unwrap_or(0);
    let completion_tokens = attributes
        .count(&[
            "gen_ai.usage.output_tokens",
            "gen_ai.usage.completion_tokens",
        ])?
        .unwrap_or(0);
    // The conventions' names first, then OpenLLMetry's.
    let cached_prompt_tokens = attributes.count(&[
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
    ])?;
    let cache_creation_tokens = attributes.count(&[
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
    ])?;
    // Part of the output tokens by the conventions; an instrumentation that counts them apart
    // still has its call counted, with reasoning capped at the output.
    let reasoning_tokens = attributes
        .count(&[
            "gen_ai.usage.reasoning.output_tokens",
            "gen_ai.usage.reasoning_tokens",
        ])?
        .map(|n| n.min(completion_tokens));
    let status = span.status.as_ref();
    let error_type = attributes.text("error.type");
    let failed = error_type.is_some() || status.is_some_and(|s| s.code == StatusCode::Error as i32);
    let error = failed.then(|| {
        let message = status.map(|s| s.message.as_str()).filter(|m| !m.is_empty());
        error_type.or(message).unwrap_or("error").to_owned()
    });
    let error_type = error_type
        .map(|t| ErrorType::parse(t).map_err(|e| format!("error.type: {e}")))
        .transpose()?;
    let finish_reason = attributes
        .first_text("gen_ai.response.finish_reasons")
        .unwrap_or(if failed { "error" } else { "unknown" });
    // Reported by some instrumentations; never more than the call itself took.
    let time_to_first_token_ms = attributes
        .seconds("gen_ai.server.time_to_first_token")
        .map(|s| ((s * 1000.0) as u64).min(latency_ms));
    let request = RequestEvent {
        request_id: request_id.clone(),
        tenant_id: tenant_id.clone(),
        route,
        model,
        provider,
        timestamp: time(span.start_time_unix_nano),
        prompt_tokens,
        user_id_hash: None,
        metadata: None,
    };
    let response = ResponseEvent {
        request_id,
        timestamp: time(span.end_time_unix_nano),
        latency_ms,
        completion_tokens,
        finish_reason: finish_reason.chars().take(64).collect(),
        error: error.map(|e| e.chars().take(1024).collect()),
        error_type,
        time_to_first_token_ms,
        cached_prompt_tokens,
        cache_creation_tokens,
        reasoning_tokens,
        response_model,
        tenant_id: Some(tenant_id),
    };
    Ok((request, response))
}

#[cfg(test)]
mod tests;
