//! Load through `POST /v1/traces`: OTLP protobuf exports of GenAI spans, as an OpenTelemetry
//! SDK's batch exporter sends them, several in flight.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value as Any, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde_json::{json, Value};

use crate::OtlpArgs;

fn attribute(key: &str, value: Any) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// The `i`-th chat span of a run: a tenant, route and model among a few, as the JSON paths'
/// load has them, ended now.
fn span(run: u64, i: usize, now_nanos: u64) -> Span {
    const MODELS: [&str; 4] = [
        "gpt-4o",
        "gpt-4o-mini",
        "claude-3-5-sonnet",
        "llama-3.1-70b",
    ];
    const ROUTES: [&str; 4] = ["/chat", "/summarize", "/search", "/classify"];
    let latency_ms = 300 + (i as u64 * 53) % 4000;
    let mut trace_id = run.to_be_bytes().to_vec();
    trace_id.extend((i as u64).to_be_bytes());
    Span {
        trace_id,
        span_id: (i as u64 + 1).to_be_bytes().to_vec(),
        name: "chat".into(),
        kind: 3,
        start_time_unix_nano: now_nanos - latency_ms * 1_000_000,
        end_time_unix_nano: now_nanos,
        attributes: vec![
            attribute("gen_ai.operation.name", Any::StringValue("chat".into())),
            attribute("gen_ai.provider.name", Any::StringValue("openai".into())),
            attribute(
                "gen_ai.request.model",
                Any::StringValue(MODELS[(i / 3) % MODELS.len()].into()),
            ),
            attribute(
                "streamlens.route",
                Any::StringValue(ROUTES[i % ROUTES.len()].into()),
            ),
            attribute(
                "gen_ai.usage.input_tokens",
                Any::IntValue(200 + (i as i64 * 37) % 1800),
            ),
            attribute(
                "gen_ai.usage.output_tokens",
                Any::IntValue(50 + (i as i64 * 29) % 900),
            ),
        ],
        ..Default::default()
    }
}

/// Exports of `--spans-per-export` spans, `--concurrency` in flight; spans/s is calls/s,
/// each call two events.
pub async fn run(args: &OtlpArgs) -> anyhow::Result<Value> {
    let url = format!("{}/v1/traces", args.ingestion.url);
    let per_export = args.spans_per_export as usize;
    let run = chrono::Utc::now().timestamp_millis() as u64;
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64;
    let resource = Resource {
        attributes: vec![
            attribute("service.name", Any::StringValue("bench".into())),
            attribute("streamlens.tenant_id", Any::StringValue("acme".into())),
        ],
        ..Default::default()
    };
    // Whole exports only, so that an accepted export is `per_export` calls. Bodies are built
    // before the clock starts: the figure is the service's, not ours.
    let spans = args.spans.div_ceil(per_export) * per_export;
    let bodies: Vec<Vec<u8>> = (0..spans)
        .collect::<Vec<_>>()
        .chunks(per_export)
        .map(|chunk| {
            ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        spans: chunk.iter().map(|&i| span(run, i, now)).collect(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .encode_to_vec()
        })
        .collect();
    let concurrency = args.concurrency as usize;
    // 200 means every call in the export was written.
    let whole = |status: u16, _: &[u8]| usize::from(status == 200);
    let (exports, seconds) =
        crate::http::post_all(&url, "application/x-protobuf", bodies, concurrency, whole).await?;
    let accepted = exports * per_export;
    Ok(json!({
        "mode": "otlp",
        "spans": spans,
        "accepted": accepted,
        "spans_per_export": per_export,
        "concurrency": concurrency,
        "seconds": seconds,
        "spans_per_sec": accepted as f64 / seconds,
        "events_per_sec": 2.0 * accepted as f64 / seconds,
    }))
}
