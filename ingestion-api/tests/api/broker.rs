//! The whole service against a real Kafka-compatible broker.

use std::collections::{BTreeSet, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use infra::kafka::{partition_for, KafkaSettings};
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn accepted_events_land_on_the_murmur2_partition_with_key_body_and_trace_header() {
    let brokers = brokers();
    let app = TestApp::spawn(&brokers, &[]).await;
    let ids: Vec<String> = (0..20).map(|i| unique(&format!("p{i}"))).collect();
    let mut sent = Vec::new();
    for id in &ids {
        let mut event = request_event(id);
        event["ignored_extra"] = json!(true);
        let (status, body) = app.post("/v1/llm/request", &event).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        event.as_object_mut().unwrap().remove("ignored_extra");
        sent.push(event);
        let (status, body) = app.post("/v1/llm/response", &response_event(id)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }

    let topics = app.settings.topics.clone();
    let requests = read_all(&brokers, &topics.requests);
    let responses = read_all(&brokers, &topics.responses);
    assert_eq!(requests.len(), ids.len());
    assert_eq!(responses.len(), ids.len());
    for record in requests.iter().chain(&responses) {
        let expected = partition_for(record.key.as_bytes(), 3);
        assert_eq!(
            record.partition, expected,
            "{} is on the wrong partition",
            record.key
        );
        assert_eq!(record.value["request_id"], record.key.as_str());
        assert!(
            record.trace_id.as_deref().is_some_and(|t| !t.is_empty()),
            "no trace header"
        );
    }
    for event in sent {
        let record = requests
            .iter()
            .find(|r| r.key == event["request_id"])
            .unwrap();
        assert_eq!(record.value, normalized(&event));
    }
    // Both halves of each request share a partition, so one processor sees both.
    for id in &ids {
        let p = |records: &[Stored]| records.iter().find(|r| &r.key == id).unwrap().partition;
        assert_eq!(p(&requests), p(&responses));
    }
    app.stop().await;
}

/// The event as the API writes it: timestamps in the canonical UTC form.
fn normalized(event: &Value) -> Value {
    let mut out = event.clone();
    let at: chrono::DateTime<chrono::Utc> = event["timestamp"].as_str().unwrap().parse().unwrap();
    out["timestamp"] = json!(at);
    out
}

#[tokio::test]
async fn a_batch_produces_exactly_its_valid_items() {
    let brokers = brokers();
    let app = TestApp::spawn(&brokers, &[("MAX_BATCH_ITEMS", "100")]).await;
    let mut items = Vec::new();
    let mut valid = BTreeSet::new();
    for i in 0..30 {
        let id = format!("batch-{i}");
        let mut req = request_event(&id);
        req["type"] = json!("request");
        let mut resp = response_event(&id);
        resp["type"] = json!("response");
        if i % 7 == 3 {
            req["prompt_tokens"] = json!(-1); // invalid: must not be written
        } else {
            valid.insert(("request", id.clone()));
        }
        valid.insert(("response", id));
        items.push(req);
        items.push(resp);
    }
    let (status, report) = app.post("/v1/llm/batch", &Value::Array(items)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{report}");
    assert_eq!(report["accepted"], valid.len());
    let rejected: Vec<u64> = report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(rejected, [6, 20, 34, 48]);

    let topics = &app.settings.topics;
    let mut written = BTreeSet::new();
    for r in read_all(&brokers, &topics.requests) {
        assert!(written.insert(("request", r.key)), "duplicate record");
    }
    for r in read_all(&brokers, &topics.responses) {
        assert!(written.insert(("response", r.key)), "duplicate record");
    }
    assert_eq!(written, valid);
    app.stop().await;
}

/// Delivery reports are served by a task that librdkafka wakes when its queue fills; a lost
/// wake-up would leave requests waiting until the delivery timeout (answered 503). Many
/// requests in flight at once, on two runtime threads, make reports arrive while others are
/// being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_in_flight_are_each_acknowledged_and_written_once() {
    let brokers = brokers();
    // A delivery timeout well under the test's patience: a request left waiting fails it.
    let app = TestApp::spawn(&brokers, &[("KAFKA_DELIVERY_TIMEOUT_MS", "5000")]).await;
    let ids: Vec<String> = (0..600).map(|i| unique(&format!("c{i}"))).collect();
    let client = &app;
    let answers =
        futures::future::join_all(ids.chunks(3).enumerate().map(|(n, chunk)| async move {
            match chunk {
                // Every third group as one batch, the others one request at a time.
                [a, b, c] if n % 3 == 0 => {
                    let items: Vec<Value> = [a, b, c]
                        .iter()
                        .map(|id| {
                            let mut event = request_event(id);
                            event["type"] = json!("request");
                            event
                        })
                        .collect();
                    vec![client.post("/v1/llm/batch", &Value::Array(items)).await]
                }
                _ => {
                    let mut answers = Vec::new();
                    for id in chunk {
                        answers.push(client.post("/v1/llm/request", &request_event(id)).await);
                    }
                    answers
                }
            }
        }))
        .await;
    for (status, body) in answers.iter().flatten() {
        assert_eq!(*status, StatusCode::ACCEPTED, "{body}");
        if let Some(rejected) = body.get("rejected") {
            assert_eq!(rejected, &json!([]), "{body}");
        }
    }
    let mut written = HashSet::new();
    for record in read_all(&brokers, &app.settings.topics.requests) {
        assert!(
            written.insert(record.key.clone()),
            "{} written twice",
            record.key
        );
    }
    assert_eq!(written, ids.iter().cloned().collect::<HashSet<_>>());
    app.stop().await;
}

#[tokio::test]
async fn readiness_checks_the_real_broker_and_topics() {
    let app = TestApp::spawn(&brokers(), &[]).await;
    let response = app
        .client
        .get(format!("{}/ready", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    app.stop().await;
}

#[tokio::test]
async fn start_up_refuses_topics_that_are_not_co_partitioned() {
    let brokers = brokers();
    let suffix = unique("cp");
    let (requests, responses) = (
        format!("llm.requests.{suffix}"),
        format!("llm.responses.{suffix}"),
    );
    for (topic, partitions) in [(&requests, 3), (&responses, 2)] {
        let kafka = KafkaSettings::new(brokers.clone(), partitions);
        kafka
            .ensure_topics(&[topic], &[], Duration::from_secs(10))
            .await
            .unwrap();
    }
    let settings = test_settings(&[
        ("KAFKA_BROKERS", &brokers),
        ("TOPIC_REQUESTS", &requests),
        ("TOPIC_RESPONSES", &responses),
        ("TOPIC_METRICS", &format!("llm.metrics.{suffix}")),
        ("TOPIC_DLQ", &format!("llm.dlq.{suffix}")),
    ]);
    let error = ingestion_api::startup::Application::build(settings)
        .await
        .unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains("not co-partitioned"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_produces_and_every_202_is_written() {
    let brokers = brokers();
    let app = TestApp::spawn(&brokers, &[]).await;
    let topic = app.settings.topics.requests.clone();
    let (first_done, mut first) = tokio::sync::mpsc::channel::<()>(200);
    let mut posts = Vec::new();
    for i in 0..200 {
        let (client, url) = (app.client.clone(), format!("{}/v1/llm/request", app.base));
        let id = unique(&format!("s{i}"));
        let done = first_done.clone();
        posts.push(tokio::spawn(async move {
            let answer = client.post(url).json(&request_event(&id)).send().await;
            let _ = done.try_send(());
            (id, answer.map(|r| r.status().as_u16()))
        }));
    }
    // Stop while the rest are still being produced.
    first.recv().await;
    app.stop().await;
    let mut accepted = HashSet::new();
    let mut refused = 0;
    for post in posts {
        let (id, status) = post.await.unwrap();
        match status {
            Ok(202) => {
                accepted.insert(id);
            }
            Ok(other) => panic!("unexpected status {other} during shutdown"),
            Err(_) => refused += 1, // not accepted, and the client knows it
        }
    }
    assert!(
        accepted.len() > 1,
        "no request was in flight at shutdown; the test proved nothing"
    );
    let written: HashSet<String> = read_all(&brokers, &topic)
        .into_iter()
        .map(|r| r.key)
        .collect();
    let lost: Vec<_> = accepted.difference(&written).collect();
    assert!(
        lost.is_empty(),
        "answered 202 but not in the topic: {lost:?} ({refused} refused)"
    );
}

/// A broker of the test's own on a free port, so it can be stopped without disturbing others.
struct OwnBroker {
    port: u16,
    child: Child,
}

impl OwnBroker {
    fn start(port: u16) -> Self {
        let bin = std::env::var("TANSU_BIN").unwrap_or_else(|_| {
            panic!("TANSU_BIN is not set: run `make test` (scripts/stack.sh installs Tansu and exports it)")
        });
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args([
                "broker",
                "--storage-engine",
                "memory://tansu/",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Tansu starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "Tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[tokio::test]
async fn with_the_broker_down_the_api_answers_503_and_accepts_again_after_a_restart() {
    let port = free_port();
    let broker = OwnBroker::start(port);
    let address = broker.address();
    let debug = std::env::var("TEST_KAFKA_CONFIG").unwrap_or_default();
    let app = TestApp::spawn(
        &address,
        &[
            ("KAFKA_DELIVERY_TIMEOUT_MS", "1500"),
            ("HTTP_REQUEST_TIMEOUT_MS", "5000"),
            ("KAFKA_CONFIG", &debug),
        ],
    )
    .await;
    let (status, _) = app
        .post("/v1/llm/request", &request_event("before-outage"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    broker.kill();
    let mut refused = Vec::new();
    for i in 0..3 {
        let id = format!("during-outage-{i}");
        let (status, body) = app.post("/v1/llm/request", &request_event(&id)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"], "broker_unavailable");
        refused.push(id);
    }
    let mut batch_item = request_event("during-outage-batch");
    batch_item["type"] = json!("request");
    let (status, report) = app.post("/v1/llm/batch", &json!([batch_item])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{report}");
    assert_eq!(report["accepted"], 0);
    assert_eq!(report["failed"][0]["request_id"], "during-outage-batch");
    let ready = app
        .client
        .get(format!("{}/ready", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);

    // Same address, fresh in-memory storage: the operator recreates the topics.
    let broker = OwnBroker::start(port);
    let kafka = KafkaSettings::new(address.clone(), 3);
    let topics = app.settings.topics.clone();
    kafka
        .ensure_topics(&topics.inputs(), &topics.inputs(), Duration::from_secs(10))
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt = 0;
    let recovered = loop {
        attempt += 1;
        let id = format!("after-restart-{attempt}");
        let (status, body) = app.post("/v1/llm/request", &request_event(&id)).await;
        match status {
            StatusCode::ACCEPTED => break id,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(
                    Instant::now() < deadline,
                    "still refusing after the broker came back: {body}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    };
    let written: HashSet<String> = read_all(&address, &topics.requests)
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert!(written.contains(&recovered));
    for id in &refused {
        assert!(
            !written.contains(id),
            "{id} was answered 503 but written later"
        );
    }
    app.stop().await;
    drop(broker);
}
