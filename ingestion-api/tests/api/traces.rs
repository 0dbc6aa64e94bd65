//! `POST /v1/traces` in-process: OTLP exports in both encodings, gzip, partial success, and
//! the answers an exporter retries on.

use std::io::Write;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::Utc;
use http_body_util::BodyExt;
use ingestion_api::routes::Service;
use metrics_core::events::EventKind;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value::Value as Any, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::helpers::*;

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Any::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// A span that ended a second ago; a chat call unless `genai` is false.
fn span(id: u8, genai: bool, model: Option<&str>) -> Span {
    let end = Utc::now().timestamp_nanos_opt().unwrap() as u64 - 1_000_000_000;
    let mut attributes = vec![text("streamlens.tenant_id", "acme")];
    if genai {
        attributes.push(text("gen_ai.operation.name", "chat"));
    }
    attributes.extend(model.map(|m| text("gen_ai.request.model", m)));
    Span {
        trace_id: vec![9; 16],
        span_id: vec![id; 8],
        start_time_unix_nano: end - 700_000_000,
        end_time_unix_nano: end,
        attributes,
        ..Default::default()
    }
}

fn export(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text("service.name", "bot")],
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

struct Sent {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

async fn send(app: &Service, content_type: &str, gzip: bool, body: Vec<u8>) -> Sent {
    let mut request = Request::post("/v1/traces").header("content-type", content_type);
    let body = if gzip {
        request = request.header("content-encoding", "gzip");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&body).unwrap();
        encoder.finish().unwrap()
    } else {
        body
    };
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Sent {
        status,
        headers,
        body,
    }
}

#[tokio::test]
async fn a_protobuf_export_becomes_a_request_and_a_response_per_model_call() {
    let publisher = RecordingPublisher::new(Mode::Acknowledge);
    let app = test_router(publisher.clone());
    let body = export(vec![span(1, true, Some("gpt-4o")), span(2, false, None)]);
    let sent = send(&app, "application/x-protobuf", false, body.encode_to_vec()).await;
    assert_eq!(sent.status, StatusCode::OK);
    assert_eq!(sent.headers["content-type"], "application/x-protobuf");
    let answer = ExportTraceServiceResponse::decode(&sent.body[..]).unwrap();
    assert_eq!(answer.partial_success, None, "nothing refused");
    let records = publisher.records();
    let kinds: Vec<EventKind> = records.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::Request, EventKind::Response],
        "the plain span is skipped"
    );
    let id = format!("{}-{}", "09".repeat(16), "01".repeat(8));
    assert!(records.iter().all(|r| r.key == id));
    let request: Value = serde_json::from_slice(&records[0].payload).unwrap();
    assert_eq!(
        (&request["tenant_id"], &request["route"], &request["model"]),
        (&json!("acme"), &json!("bot"), &json!("gpt-4o"))
    );
    let response: Value = serde_json::from_slice(&records[1].payload).unwrap();
    assert_eq!(response["latency_ms"], 700);
    assert_eq!(response["tenant_id"], "acme");
}

#[tokio::test]
async fn a_gzipped_json_export_is_read_and_answered_in_json() {
    let publisher = RecordingPublisher::new(Mode::Acknowledge);
    let app = test_router(publisher.clone());
    let start = Utc::now().timestamp_nanos_opt().unwrap() - 5_000_000_000;
    let body = json!({"resourceSpans": [{"resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "bot"}},
            {"key": "streamlens.tenant_id", "value": {"stringValue": "acme"}}]},
        "scopeSpans": [{"spans": [{"traceId": "0af7651916cd43dd8448eb211c80319c",
            "spanId": "b7ad6b7169203331", "startTimeUnixNano": start.to_string(),
            "endTimeUnixNano": (start + 2_000_000_000).to_string(), "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
            {"key": "gen_ai.request.model", "value": {"stringValue": "claude-sonnet-4"}},
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "120"}}]}]}]}]});
    let sent = send(
        &app,
        "application/json",
        true,
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(
        sent.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&sent.body)
    );
    assert_eq!(sent.headers["content-type"], "application/json");
    assert_eq!(
        serde_json::from_slice::<Value>(&sent.body).unwrap(),
        json!({})
    );
    let request: Value = serde_json::from_slice(&publisher.records()[0].payload).unwrap();
    assert_eq!(request["prompt_tokens"], 120);
    assert_eq!(
        request["request_id"],
        "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"
    );
}

#[tokio::test]
async fn a_span_that_cannot_be_a_call_is_named_in_partial_success_and_the_rest_written() {
    let publisher = RecordingPublisher::new(Mode::Acknowledge);
    let app = test_router(publisher.clone());
    let body = export(vec![span(1, true, None), span(2, true, Some("gpt-4o"))]);
    let sent = send(&app, "application/x-protobuf", false, body.encode_to_vec()).await;
    assert_eq!(sent.status, StatusCode::OK);
    let partial = ExportTraceServiceResponse::decode(&sent.body[..])
        .unwrap()
        .partial_success
        .expect("a partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial.error_message.contains("gen_ai.request.model"),
        "{}",
        partial.error_message
    );
    assert_eq!(publisher.records().len(), 2);
}

#[tokio::test]
async fn an_export_the_broker_did_not_take_is_a_503_to_retry() {
    let publisher = RecordingPublisher::new(Mode::Fail);
    let app = test_router(publisher);
    let body = export(vec![span(1, true, Some("gpt-4o"))]);
    let sent = send(&app, "application/x-protobuf", false, body.encode_to_vec()).await;
    assert_eq!(sent.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(sent.headers["retry-after"], "1");
}

#[tokio::test]
async fn what_is_not_an_otlp_export_is_a_4xx_saying_why() {
    let publisher = RecordingPublisher::new(Mode::Acknowledge);
    let app = test_router(publisher.clone());
    let error = |sent: &Sent| serde_json::from_slice::<Value>(&sent.body).unwrap()["error"].clone();
    let garbage = send(&app, "application/x-protobuf", false, vec![0xff; 40]).await;
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
    assert_eq!(error(&garbage), "malformed_otlp");
    let not_json = send(
        &app,
        "application/json",
        false,
        b"{\"resourceSpans\": 3}".to_vec(),
    )
    .await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    let wrong_type = send(&app, "text/plain", false, b"x".to_vec()).await;
    assert_eq!(wrong_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let bad_gzip = Request::post("/v1/traces")
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(Body::from("not gzip"))
        .unwrap();
    let answer = app.clone().oneshot(bad_gzip).await.unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    assert!(publisher.records().is_empty());
}

#[tokio::test]
async fn an_export_of_more_events_than_a_batch_may_hold_is_refused_whole() {
    let publisher = RecordingPublisher::new(Mode::Acknowledge);
    let app = test_router(publisher.clone());
    // The test settings allow 50 items a batch: 26 calls are 52 events.
    let spans = (1..=26).map(|id| span(id, true, Some("gpt-4o"))).collect();
    let sent = send(
        &app,
        "application/x-protobuf",
        false,
        export(spans).encode_to_vec(),
    )
    .await;
    assert_eq!(sent.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(publisher.records().is_empty());
}

#[tokio::test]
async fn the_batch_limit_holds_for_the_inflated_body() {
    let publisher = RecordingPublisher::new(Mode::Acknowledge);
    let app = test_router(publisher.clone());
    // Zeros compress to almost nothing; inflated they are far over the test's limit.
    let zeros = vec![0u8; 64 * 1024 * 1024];
    let sent = send(&app, "application/x-protobuf", true, zeros).await;
    assert_eq!(sent.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(publisher.records().is_empty());
}

/// OTLP/gRPC against the real service and broker: the calls land on the topics, a span that
/// cannot be a call comes back in partial_success, and the server stops cleanly with the HTTP
/// one.
#[tokio::test]
async fn an_export_over_grpc_reaches_the_broker() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

    let brokers = brokers();
    let app = TestApp::spawn(&brokers, &[]).await;
    let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{}", app.grpc_port))
        .await
        .expect("the gRPC listener answers");
    let answer = client
        .export(export(vec![
            span(1, true, Some("gpt-4o")),
            span(2, true, None),
        ]))
        .await
        .expect("the export is taken")
        .into_inner();
    assert_eq!(answer.partial_success.map(|p| p.rejected_spans), Some(1));
    let topics = app.settings.topics.clone();
    let requests = read_all(&brokers, &topics.requests);
    let responses = read_all(&brokers, &topics.responses);
    let id = format!("{}-{}", "09".repeat(16), "01".repeat(8));
    assert_eq!(
        requests.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );
    assert_eq!(
        responses.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );
    drop(client);
    app.stop().await;
}
