use chrono::TimeDelta;
use opentelemetry_proto::tonic::common::v1::ArrayValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};
use proptest::prelude::*;

use super::*;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_764_000_000, 0).unwrap()
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

fn int(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

/// A chat span of `latency_ms`, started a minute before `now()`, with `extra` attributes
/// (each in place of one of the same key).
fn span(id: u8, latency_ms: u64, extra: Vec<KeyValue>) -> Span {
    let start = (now() - TimeDelta::minutes(1))
        .timestamp_nanos_opt()
        .unwrap() as u64;
    let mut attributes = vec![
        text("gen_ai.operation.name", "chat"),
        text("gen_ai.request.model", "gpt-4o"),
        int("gen_ai.usage.input_tokens", 800),
        int("gen_ai.usage.output_tokens", 90),
    ];
    attributes.retain(|kv| extra.iter().all(|e| e.key != kv.key));
    attributes.extend(extra);
    Span {
        trace_id: vec![7; 16],
        span_id: vec![id; 8],
        start_time_unix_nano: start,
        end_time_unix_nano: start + latency_ms * 1_000_000,
        attributes,
        ..Default::default()
    }
}

fn export(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn acme() -> TenantId {
    TenantId::parse("acme").unwrap()
}

fn mapped(spans: Vec<Span>) -> Mapped {
    let export = export(vec![text("service.name", "support-bot")], spans);
    map(&export, Some(&acme()), now(), &Limits::default())
}

fn halves(events: &[Event]) -> (&RequestEvent, &ResponseEvent) {
    match events {
        [Event::Request(request), Event::Response(response)] => (request, response),
        other => panic!("not a request and its response: {other:?}"),
    }
}

#[test]
fn a_chat_span_is_a_request_at_its_start_and_a_response_at_its_end() {
    let extra = vec![
        kv(
            "gen_ai.response.finish_reasons",
            any_value::Value::ArrayValue(ArrayValue {
                values: vec![AnyValue {
                    value: Some(any_value::Value::StringValue("length".into())),
                }],
            }),
        ),
        int("gen_ai.usage.cache_read.input_tokens", 512),
        int("gen_ai.usage.cache_creation.input_tokens", 128),
        int("gen_ai.usage.reasoning.output_tokens", 40),
        text("gen_ai.provider.name", "openai"),
        text("gen_ai.response.model", "gpt-4o-2024-08-06"),
        kv(
            "gen_ai.server.time_to_first_token",
            any_value::Value::DoubleValue(0.3),
        ),
    ];
    let m = mapped(vec![span(1, 1250, extra)]);
    assert!(m.rejected.is_empty(), "{:?}", m.rejected);
    let (request, response) = halves(&m.events);
    let id = format!("{}-{}", "07".repeat(16), "01".repeat(8));
    assert_eq!(request.request_id, id.as_str());
    assert_eq!(response.request_id, id.as_str());
    assert_eq!(request.tenant_id, "acme");
    assert_eq!(response.tenant_id.as_ref().unwrap(), "acme");
    assert_eq!(request.route, "support-bot");
    assert_eq!(request.model, "gpt-4o");
    assert_eq!(request.timestamp, now() - TimeDelta::minutes(1));
    assert_eq!(
        response.timestamp,
        request.timestamp + TimeDelta::milliseconds(1250)
    );
    assert_eq!(request.prompt_tokens, 800);
    assert_eq!(response.completion_tokens, 90);
    assert_eq!(response.cached_prompt_tokens, Some(512));
    assert_eq!(response.cache_creation_tokens, Some(128));
    assert_eq!(response.reasoning_tokens, Some(40));
    assert_eq!(request.provider.as_ref().unwrap(), "openai");
    assert_eq!(
        response.response_model.as_ref().unwrap(),
        "gpt-4o-2024-08-06"
    );
    assert_eq!(response.latency_ms, 1250);
    assert_eq!(response.time_to_first_token_ms, Some(300));
    assert_eq!(response.finish_reason, "length");
    assert_eq!(response.error, None);
}

#[test]
fn spans_that_are_no_model_call_are_skipped_not_refused() {
    let mut plain = span(2, 10, vec![]);
    plain
        .attributes
        .retain(|kv| kv.key != "gen_ai.operation.name");
    let m = mapped(vec![plain, span(3, 10, vec![])]);
    assert_eq!((m.skipped, m.rejected.len(), m.events.len()), (1, 0, 2));
}

#[test]
fn the_route_comes_from_the_span_then_the_resource_then_the_service() {
    let route = |span_attrs: Vec<KeyValue>, resource: Vec<KeyValue>| {
        let export = export(resource, vec![span(4, 10, span_attrs)]);
        let m = map(&export, Some(&acme()), now(), &Limits::default());
        halves(&m.events).0.route.to_string()
    };
    let service = || text("service.name", "svc");
    let own = || text("streamlens.route", "/own");
    assert_eq!(route(vec![own()], vec![service()]), "/own");
    assert_eq!(
        route(vec![], vec![service(), text("streamlens.route", "/res")]),
        "/res"
    );
    assert_eq!(route(vec![], vec![service()]), "svc");
}

#[test]
fn a_failed_call_keeps_its_error_type_and_a_status_error_counts_too() {
    let typed = span(5, 10, vec![text("error.type", "rate_limit_exceeded")]);
    let mut by_status = span(6, 10, vec![]);
    by_status.status = Some(Status {
        code: StatusCode::Error as i32,
        message: "upstream 500".into(),
    });
    let m = mapped(vec![typed, by_status]);
    let (_, typed) = halves(&m.events[..2]);
    let (_, by_status) = halves(&m.events[2..]);
    assert_eq!(typed.error.as_deref(), Some("rate_limit_exceeded"));
    assert_eq!(typed.failure_type(), Some("rate_limit_exceeded"));
    assert_eq!(typed.finish_reason, "error");
    assert_eq!(by_status.error.as_deref(), Some("upstream 500"));
    // No type given: the window counts it as OpenTelemetry's fallback, `_OTHER`.
    assert_eq!(by_status.error_type, None);
    assert_eq!(by_status.failure_type(), Some("_OTHER"));
}

#[test]
fn legacy_provider_and_token_names_stand_in_and_reasoning_never_exceeds_the_output() {
    let s = span(
        7,
        10,
        vec![
            text("gen_ai.system", "anthropic"),
            int("gen_ai.usage.cache_read_input_tokens", 5),
            int("gen_ai.usage.cache_creation_input_tokens", 6),
            // More than the 90 output tokens: an instrumentation counting them apart.
            int("gen_ai.usage.reasoning_tokens", 500),
        ],
    );
    let m = mapped(vec![s]);
    assert!(m.rejected.is_empty(), "{:?}", m.rejected);
    let (request, response) = halves(&m.events);
    assert_eq!(request.provider.as_ref().unwrap(), "anthropic");
    assert_eq!(response.cached_prompt_tokens, Some(5));
    assert_eq!(response.cache_creation_tokens, Some(6));
    assert_eq!(response.reasoning_tokens, Some(90));
    assert_eq!(response.response_model, None);
}

#[test]
fn the_response_model_and_legacy_token_names_stand_in() {
    let mut s = span(
        8,
        10,
        vec![
            text("gen_ai.response.model", "gpt-4o-2024-08-06"),
            int("gen_ai.usage.prompt_tokens", 11),
            int("gen_ai.usage.completion_tokens", 12),
        ],
    );
    s.attributes.retain(|kv| {
        !matches!(
            kv.key.as_str(),
            "gen_ai.request.model" | "gen_ai.usage.input_tokens" | "gen_ai.usage.output_tokens"
        )
    });
    let m = mapped(vec![s]);
    let (request, response) = halves(&m.events);
    assert_eq!(request.model, "gpt-4o-2024-08-06");
    assert_eq!(
        (request.prompt_tokens, response.completion_tokens),
        (11, 12)
    );
}

#[test]
fn a_span_that_cannot_be_a_call_is_refused_with_why_and_the_rest_go_on() {
    let mut no_model = span(9, 10, vec![]);
    no_model
        .attributes
        .retain(|kv| kv.key != "gen_ai.request.model");
    let negative = span(10, 10, vec![int("gen_ai.usage.input_tokens", -5)]);
    let mut zero_ids = span(11, 10, vec![]);
    zero_ids.trace_id = vec![0; 16];
    let mut backwards = span(12, 10, vec![]);
    backwards.end_time_unix_nano = backwards.start_time_unix_nano - 1;
    let mut old = span(13, 10, vec![]);
    old.start_time_unix_nano -= 30 * 24 * 3600 * 1_000_000_000;
    old.end_time_unix_nano -= 30 * 24 * 3600 * 1_000_000_000;
    let m = mapped(vec![
        no_model,
        negative,
        zero_ids,
        backwards,
        old,
        span(14, 10, vec![]),
    ]);
    assert_eq!(m.events.len(), 2, "the good span is kept");
    let reasons = m.rejected.join("\n");
    for why in [
        "gen_ai.request.model or gen_ai.response.model: is required",
        "gen_ai.usage.input_tokens: must be a non-negative integer",
        "trace_id and span_id",
        "the span must start before it ends",
        "timestamp: must not be more than",
    ] {
        assert!(reasons.contains(why), "{why} not in {reasons}");
    }
}

#[test]
fn without_keys_a_span_names_its_tenant() {
    let export_with = |resource: Vec<KeyValue>| export(resource, vec![span(15, 10, vec![])]);
    let named = export_with(vec![
        text("service.name", "svc"),
        text("streamlens.tenant_id", "globex"),
    ]);
    let m = map(&named, None, now(), &Limits::default());
    assert_eq!(halves(&m.events).0.tenant_id, "globex");
    let unnamed = export_with(vec![text("service.name", "svc")]);
    let m = map(&unnamed, None, now(), &Limits::default());
    assert!(m.rejected[0].contains("streamlens.tenant_id: is required"));
    // With a key, the key's tenant wins over what the span says.
    let m = map(&named, Some(&acme()), now(), &Limits::default());
    assert_eq!(halves(&m.events).0.tenant_id, "acme");
}

proptest! {
    /// Every GenAI span is either two events with the span's tokens and duration or one
    /// refusal, and every other span is skipped: nothing is lost or counted twice.
    #[test]
    fn every_span_is_accounted_for_once(
        spans in prop::collection::vec(
            (any::<bool>(), 0u64..10_000, -2i64..2_000_000, any::<u8>()), 0..40)
    ) {
        let built: Vec<Span> = spans
            .iter()
            .enumerate()
            .map(|(i, (genai, latency, tokens, _))| {
                let mut s = span(i as u8, *latency, vec![int("gen_ai.usage.input_tokens", *tokens)]);
                s.span_id = (i as u64 + 1).to_be_bytes().to_vec();
                if !genai {
                    s.attributes.retain(|kv| kv.key != "gen_ai.operation.name");
                }
                s
            })
            .collect();
        let m = mapped(built);
        let genai = spans.iter().filter(|s| s.0).count();
        prop_assert_eq!(m.skipped, spans.len() - genai);
        prop_assert_eq!(m.events.len() / 2 + m.rejected.len(), genai);
        let refused = spans.iter().filter(|s| s.0 && s.2 < 0).count();
        prop_assert_eq!(m.rejected.len(), refused);
        let expected: u64 = spans.iter().filter(|s| s.0 && s.2 >= 0).map(|s| s.2 as u64).sum();
        let prompt: u64 = m.events.iter().map(|e| match e {
            Event::Request(r) => r.prompt_tokens,
            Event::Response(_) => 0,
        }).sum();
        prop_assert_eq!(prompt, expected);
    }
}
