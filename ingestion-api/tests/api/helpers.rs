//! Shared set-up: test apps, events, and reading back what reached the broker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::Utc;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use ingestion_api::metrics::Metrics;
use ingestion_api::publisher::{PublishError, Publisher, Record};
use ingestion_api::routes::Service;
use ingestion_api::routes::{router, AppState, HttpConfig};
use ingestion_api::settings::Settings;
use ingestion_api::startup::Application;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tower::ServiceExt;

/// The broker the tests use. `make test` starts the local stack and sets this.
pub fn brokers() -> String {
    test_support::kafka_brokers()
}

pub use test_support::{database_url, free_port, unique};

pub fn request_event(request_id: &str) -> Value {
    json!({
        "request_id": request_id,
        "tenant_id": "acme",
        "route": "/chat",
        "model": "gpt-4o-mini",
        "timestamp": Utc::now().to_rfc3339(),
        "prompt_tokens": 42,
    })
}

pub fn response_event(request_id: &str) -> Value {
    json!({
        "request_id": request_id,
        "timestamp": Utc::now().to_rfc3339(),
        "latency_ms": 730,
        "completion_tokens": 128,
        "finish_reason": "stop",
    })
}

// ---------------------------------------------------------------- in-process handlers

/// What the recording publisher does with records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Acknowledge,
    Fail,
}

/// Remembers every record it is handed; acknowledges or fails them all.
#[derive(Debug)]
pub struct RecordingPublisher {
    pub records: Mutex<Vec<Record>>,
    pub mode: Mutex<Mode>,
}

impl RecordingPublisher {
    pub fn new(mode: Mode) -> Arc<Self> {
        Arc::new(Self {
            records: Mutex::new(Vec::new()),
            mode: Mutex::new(mode),
        })
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }
}

impl Publisher for RecordingPublisher {
    fn publish<'a>(
        &'a self,
        records: &'a [Record],
    ) -> BoxFuture<'a, Vec<Result<(), PublishError>>> {
        let mode = *self.mode.lock().unwrap();
        let results = records
            .iter()
            .map(|_| match mode {
                Mode::Acknowledge => Ok(()),
                Mode::Fail => Err(PublishError::Timeout),
            })
            .collect();
        if mode == Mode::Acknowledge {
            self.records.lock().unwrap().extend(records.iter().cloned());
        }
        Box::pin(async move { results })
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), String>> {
        let mode = *self.mode.lock().unwrap();
        Box::pin(async move {
            match mode {
                Mode::Acknowledge => Ok(()),
                Mode::Fail => Err("broker unreachable".to_owned()),
            }
        })
    }

    fn flush(&self, _timeout: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

pub fn test_settings(extra: &[(&str, &str)]) -> Settings {
    let defaults = [
        ("HTTP_HOST", "127.0.0.1"),
        ("HTTP_PORT", "0"),
        ("OTLP_GRPC_PORT", "0"),
        ("MAX_BODY_BYTES", "4096"),
        ("MAX_BATCH_ITEMS", "50"),
        ("AUTH_MODE", "disabled"),
    ];
    // Later pairs win: `extra` overrides the defaults.
    let pairs = defaults.iter().chain(extra).copied();
    Settings::from_env(metrics_core::settings::Env::from_pairs(pairs))
        .expect("test settings are valid")
}

/// A router wired to `publisher`, as `startup` wires it, for `oneshot` calls.
pub fn test_router(publisher: Arc<RecordingPublisher>) -> Service {
    keyed_router(publisher, infra::keys::Auth::Disabled, None)
}

/// The same with API keys and a rate limit.
pub fn keyed_router(
    publisher: Arc<RecordingPublisher>,
    auth: infra::keys::Auth,
    limiter: Option<Arc<ingestion_api::limit::RateLimiter>>,
) -> Service {
    let s = test_settings(&[]);
    router(AppState {
        auth,
        limiter,
        publisher,
        metrics: Arc::new(Metrics::default()),
        config: Arc::new(HttpConfig {
            topics: s.topics,
            limits: s.limits,
            max_body_bytes: s.max_body_bytes,
            max_batch_bytes: s.max_batch_bytes,
            max_batch_items: s.max_batch_items,
            request_timeout: s.request_timeout,
        }),
    })
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The `field` names of a JSON error body.
    pub fn fields(&self) -> Vec<String> {
        let body = self.json();
        body["fields"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|f| f["field"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub async fn call(
    app: &Service,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let response = app
        .clone()
        .oneshot(request.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

pub async fn post_json(app: &Service, path: &str, body: &Value) -> Answer {
    call(
        app,
        "POST",
        path,
        Some("application/json"),
        body.to_string(),
    )
    .await
}

// ---------------------------------------------------------------- the real service

/// A running ingestion API on a free port, writing to topics of its own.
pub struct TestApp {
    pub base: String,
    pub settings: Settings,
    /// OTLP/gRPC's port.
    pub grpc_port: u16,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(brokers: &str, extra: &[(&str, &str)]) -> TestApp {
        if std::env::var_os("TEST_LOG").is_some() {
            infra::logging::init(false);
        }
        let suffix = unique("t");
        let topics = [
            ("TOPIC_REQUESTS", format!("llm.requests.{suffix}")),
            ("TOPIC_RESPONSES", format!("llm.responses.{suffix}")),
            ("TOPIC_METRICS", format!("llm.metrics.{suffix}")),
            ("TOPIC_DLQ", format!("llm.dlq.{suffix}")),
        ];
        let mut pairs: Vec<(&str, &str)> =
            vec![("KAFKA_BROKERS", brokers), ("TOPIC_PARTITIONS", "3")];
        pairs.extend(topics.iter().map(|(k, v)| (*k, v.as_str())));
        pairs.extend_from_slice(extra);
        let settings = test_settings(&pairs);
        let app = Application::build(settings.clone())
            .await
            .expect("the app starts");
        let base = format!("http://127.0.0.1:{}", app.port());
        let grpc_port = app.otlp_grpc_port();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        TestApp {
            base,
            settings,
            grpc_port,
            client: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("the API answers");
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        (status, response.json().await.expect("a JSON body"))
    }

    /// Stops the server the way SIGTERM does and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("clean shutdown");
        }
    }
}

/// One record read back from the broker.
#[derive(Debug, Clone)]
pub struct Stored {
    pub partition: i32,
    pub key: String,
    pub value: Value,
    pub trace_id: Option<String>,
}

fn stored(m: &BorrowedMessage<'_>) -> Stored {
    let trace_id = m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == infra::http::REQUEST_ID_HEADER)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    });
    Stored {
        partition: m.partition(),
        key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
        value: serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or(Value::Null),
        trace_id,
    }
}

/// Every record in `topic`, read from the start of each partition until the broker reports
/// its end. (Partition EOF rather than the high watermark: Tansu 0.6 reports a high watermark
/// that counts a multi-record batch once.)
pub fn read_all(brokers: &str, topic: &str) -> Vec<Stored> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    let mut at_end = std::collections::HashSet::new();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while at_end.len() < partitions as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out reading {topic}"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(stored(&m)),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}
