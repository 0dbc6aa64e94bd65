//! Handlers in-process, with a publisher that records instead of writing to Kafka.

use axum::http::StatusCode;
use metrics_core::events::EventKind;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn a_valid_request_is_accepted_and_handed_over_keyed_by_request_id() {
    let publisher = RecordingPublisher::new(Mode::Acknowledge);
    let app = test_router(publisher.clone());
    let answer = post_json(&app, "/v1/llm/request", &request_event("req-1")).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
    assert_eq!(
        answer.json(),
        json!({"status": "accepted", "request_id": "req-1"})
    );
    let records = publisher.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].kind, EventKind::Request);
    assert_eq!(records[0].key, "req-1");
    let written: Value = serde_json::from_slice(&records[0].payload).unwrap();
    assert_eq!(written["tenant_id"], "acme");
    assert_eq!(written["prompt_tokens"], 42);
}

#[tokio::test]
async fn a_valid_response_goes_to_the_responses_topic() {
    let publisher = RecordingPublisher::new(Mode::Acknowledge);
    let app = test_router(publisher.clone());
    let answer = post_json(&app, "/v1/llm/response", &response_event("req-2")).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
    assert_eq!(publisher.records()[0].kind, EventKind::Response);
}

#[tokio::test]
async fn the_http_request_id_travels_with_the_record_and_back_to_the_client() {
    let publisher = RecordingPublisher::new(Mode::Acknowledge);
    let app = test_router(publisher.clone());
    let answer = post_json(&app, "/v1/llm/request", &request_event("req-3")).await;
    let header = answer.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(!header.is_empty());
    assert_eq!(
        publisher.records()[0].trace_id.as_deref(),
        Some(header.as_str())
    );
}

#[tokio::test]
async fn invalid_fields_get_a_400_naming_each_field_and_nothing_is_written() {
    let publisher = RecordingPublisher::new(Mode::Acknowledge);
    let app = test_router(publisher.clone());
    let mut event = request_event("req-4");
    event["prompt_tokens"] = json!(-3);
    event["model"] = json!("");
    event.as_object_mut().unwrap().remove("tenant_id");
    let answer = post_json(&app, "/v1/llm/request", &event).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error"], "invalid_event");
    let mut fields = answer.fields();
    fields.sort();
    assert_eq!(fields, ["model", "prompt_tokens", "tenant_id"]);
    assert!(publisher.records().is_empty());
}

#[tokio::test]
async fn malformed_json_gets_a_400_with_a_json_body() {
    let app = test_router(RecordingPublisher::new(Mode::Acknowledge));
    let answer = call(
        &app,
        "POST",
        "/v1/llm/request",
        Some("application/json"),
        "{\"request_id\": ",
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error"], "malformed_json");
}

#[tokio::test]
async fn invalid_utf8_is_malformed_json() {
    let app = test_router(RecordingPublisher::new(Mode::Acknowledge));
    let answer = call(
        &app,
        "POST",
        "/v1/llm/request",
        Some("application/json"),
        vec![b'"', 0xff, 0xfe, b'"'],
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error"], "malformed_json");
}

#[tokio::test]
async fn a_wrong_or_missing_content_type_gets_a_415() {
    let app = test_router(RecordingPublisher::new(Mode::Acknowledge));
    let body = request_event("req-5").to_string();
    for ct in [Some("text/plain"), None] {
        let answer = call(&app, "POST", "/v1/llm/request", ct, body.clone()).await;
        assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
        assert_eq!(answer.json()["error"], "unsupported_media_type");
    }
    let answer = call(
        &app,
        "POST",
        "/v1/llm/request",
        Some("application/json; charset=utf-8"),
        body,
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_body_over_the_limit_gets_a_413_with_a_json_body() {
    let app = test_router(RecordingPublisher::new(Mode::Acknowledge));
    let mut event = request_event("req-6");
    event["padding"] = json!("x".repeat(5000)); // the test limit is 4096 bytes
    let answer = post_json(&app, "/v1/llm/request", &event).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.json()["error"], "payload_too_large");
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let publisher = RecordingPublisher::new(Mode::Acknowledge);
    let app = test_router(publisher.clone());
    let mut event = request_event("req-7");
    event["client_version"] = json!({"nested": [1, 2, {"deep": true}]});
    let answer = post_json(&app, "/v1/llm/request", &event).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    let written: Value = serde_json::from_slice(&publisher.records()[0].payload).unwrap();
    assert!(written.get("client_version").is_none());
}

#[tokio::test]
async fn the_optional_call_details_are_carried_to_the_topics() {
    let publisher = RecordingPublisher::new(Mode::Acknowledge);
    let app = test_router(publisher.clone());
    let mut request = request_event("req-9");
    request["provider"] = json!("anthropic");
    let mut response = response_event("req-9");
    for (field, value) in [
        ("error_type", json!("overloaded")),
        ("cache_creation_tokens", json!(12)),
        ("reasoning_tokens", json!(3)),
        ("response_model", json!("claude-sonnet-4-20250514")),
    ] {
        response[field] = value;
    }
    for (path, event) in [
        ("/v1/llm/request", &request),
        ("/v1/llm/response", &response),
    ] {
        let answer = post_json(&app, path, event).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
    }
    let records = publisher.records();
    let written: Vec<Value> = records
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    assert_eq!(written[0]["provider"], "anthropic");
    for field in [
        "error_type",
        "cache_creation_tokens",
        "reasoning_tokens",
        "response_model",
    ] {
        assert_eq!(written[1][field], response[field], "{field}");
    }
    // And a bad one is named like any other field.
    let mut bad = response_event("req-10");
    bad["reasoning_tokens"] = json!("many");
    let answer = post_json(&app, "/v1/llm/response", &bad).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.json()["fields"][0]["field"],
        "reasoning_tokens",
        "{}",
        answer.text
    );
}

#[tokio::test]
async fn when_the_broker_does_not_acknowledge_the_answer_is_503_never_202() {
    let app = test_router(RecordingPublisher::new(Mode::Fail));
    let answer = post_json(&app, "/v1/llm/request", &request_event("req-8")).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json()["error"], "broker_unavailable");
    assert_eq!(answer.headers["retry-after"], "1");
}

#[tokio::test]
async fn a_batch_writes_the_valid_items_and_reports_the_invalid_ones() {
    let publisher = RecordingPublisher::new(Mode::Acknowledge);
    let app = test_router(publisher.clone());
    let mut bad = request_event("b-2");
    bad["prompt_tokens"] = json!("many");
    bad["type"] = json!("request");
    let mut good_req = request_event("b-1");
    good_req["type"] = json!("request");
    let mut good_resp = response_event("b-1");
    good_resp["type"] = json!("response");
    let untyped = request_event("b-3");
    let answer = post_json(
        &app,
        "/v1/llm/batch",
        &json!([good_req, bad, good_resp, untyped]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
    let report = answer.json();
    assert_eq!(report["accepted"], 2);
    assert_eq!(report["rejected"][0]["index"], 1);
    assert_eq!(report["rejected"][0]["fields"][0]["field"], "prompt_tokens");
    assert_eq!(report["rejected"][1]["index"], 3);
    assert_eq!(report["rejected"][1]["fields"][0]["field"], "type");
    assert_eq!(report["failed"], json!([]));
    let written: Vec<_> = publisher
        .records()
        .into_iter()
        .map(|r| (r.kind, r.key))
        .collect();
    assert_eq!(
        written,
        [
            (EventKind::Request, "b-1".to_owned()),
            (EventKind::Response, "b-1".to_owned())
        ]
    );
}

#[tokio::test]
async fn an_ndjson_batch_reports_a_broken_line_and_keeps_the_rest() {
    let publisher = RecordingPublisher::new(Mode::Acknowledge);
    let app = test_router(publisher.clone());
    let mut a = request_event("n-1");
    a["type"] = json!("request");
    let mut b = response_event("n-1");
    b["type"] = json!("response");
    let body = format!("{a}\n{{not json\n\n{b}\n");
    let answer = call(
        &app,
        "POST",
        "/v1/llm/batch",
        Some("application/x-ndjson"),
        body,
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
    let report = answer.json();
    assert_eq!(report["accepted"], 2);
    assert_eq!(report["rejected"][0]["index"], 1);
    assert!(report["rejected"][0]["fields"][0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("not valid JSON"));
    assert_eq!(publisher.records().len(), 2);
}

#[tokio::test]
async fn a_batch_with_no_valid_item_is_a_400() {
    let publisher = RecordingPublisher::new(Mode::Acknowledge);
    let app = test_router(publisher.clone());
    let answer = post_json(&app, "/v1/llm/batch", &json!([{"type": "request"}, 7])).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let report = answer.json();
    assert_eq!(report["error"], "invalid_event");
    assert_eq!(report["rejected"].as_array().unwrap().len(), 2);
    assert!(publisher.records().is_empty());
}

#[tokio::test]
async fn batch_shape_errors_are_4xx_with_json_bodies() {
    let app = test_router(RecordingPublisher::new(Mode::Acknowledge));
    let empty = post_json(&app, "/v1/llm/batch", &json!([])).await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    assert_eq!(empty.fields(), ["body"]);
    let object = post_json(&app, "/v1/llm/batch", &json!({"events": []})).await;
    assert_eq!(object.status, StatusCode::BAD_REQUEST);
    assert_eq!(object.json()["error"], "malformed_json");
    let items: Vec<Value> = (0..51).map(|_| json!({})).collect(); // the test limit is 50
    let many = post_json(&app, "/v1/llm/batch", &json!(items)).await;
    assert_eq!(many.status, StatusCode::PAYLOAD_TOO_LARGE);
    let csv = call(&app, "POST", "/v1/llm/batch", Some("text/csv"), "a,b").await;
    assert_eq!(csv.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn a_batch_the_broker_did_not_acknowledge_is_a_503_listing_each_item() {
    let app = test_router(RecordingPublisher::new(Mode::Fail));
    let mut a = request_event("f-1");
    a["type"] = json!("request");
    let answer = post_json(&app, "/v1/llm/batch", &json!([a, {"type": "response"}])).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    let report = answer.json();
    assert_eq!(report["accepted"], 0);
    assert_eq!(report["failed"][0]["index"], 0);
    assert_eq!(report["failed"][0]["request_id"], "f-1");
    assert_eq!(report["rejected"][0]["index"], 1);
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let app = test_router(RecordingPublisher::new(Mode::Acknowledge));
    let missing = call(&app, "GET", "/v2/nothing", None, "").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"], "not_found");
    let wrong = call(&app, "GET", "/v1/llm/request", None, "").await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.json()["error"], "method_not_allowed");
}

#[tokio::test]
async fn health_is_independent_of_the_broker_and_readiness_is_not() {
    let app = test_router(RecordingPublisher::new(Mode::Fail));
    assert_eq!(
        call(&app, "GET", "/health", None, "").await.status,
        StatusCode::OK
    );
    let ready = call(&app, "GET", "/ready", None, "").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["error"], "not_ready");
}

#[tokio::test]
async fn metrics_count_requests_rejections_and_produce_errors() {
    let publisher = RecordingPublisher::new(Mode::Acknowledge);
    let app = test_router(publisher.clone());
    post_json(&app, "/v1/llm/request", &request_event("m-1")).await;
    post_json(&app, "/v1/llm/request", &json!({})).await;
    *publisher.mode.lock().unwrap() = Mode::Fail;
    post_json(&app, "/v1/llm/response", &response_event("m-1")).await;
    let text = call(&app, "GET", "/metrics", None, "").await.text;
    for line in [
        r#"streamlens_ingestion_events_accepted_total{kind="request"} 1"#,
        r#"streamlens_ingestion_events_rejected_total{kind="request"} 1"#,
        r#"streamlens_ingestion_produce_errors_total{reason="timeout"} 1"#,
        r#"streamlens_ingestion_http_requests_total{method="POST",route="/v1/llm/request",status="202"} 1"#,
        r#"streamlens_ingestion_http_requests_total{method="POST",route="/v1/llm/request",status="400"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let app = test_router(RecordingPublisher::new(Mode::Acknowledge));
    let doc = call(&app, "GET", "/openapi.json", None, "").await.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let operations = test_support::operations(&doc);
    // What the README promises is in the document, and the document promises nothing more.
    assert_eq!(operations, test_support::readme_endpoints("Ingestion API"));
    // Every operation of the document is routed: none answers with the fallback's 404 or 405.
    for operation in &operations {
        let (method, path) = operation.split_once(' ').unwrap();
        let answer = call(&app, method, path, None, "").await;
        assert!(
            ![StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED].contains(&answer.status),
            "{operation} is documented but not routed: {}",
            answer.status
        );
    }
    let required = &doc["components"]["schemas"]["RequestEvent"]["required"];
    assert_eq!(
        required,
        &json!([
            "request_id",
            "tenant_id",
            "route",
            "model",
            "timestamp",
            "prompt_tokens"
        ])
    );
    for schema in [
        "ResponseEvent",
        "BatchItem",
        "BatchReport",
        "Error",
        "FieldError",
    ] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "{schema} missing from the document"
        );
    }
}
