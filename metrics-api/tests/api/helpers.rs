//! A tenant's windows written by the processor binary, and the query API serving them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use infra::kafka::KafkaSettings;
use metrics_api::settings::Settings;
use metrics_api::startup::Application;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use sqlx::PgPool;

pub use test_support::{free_port, unique};

/// One call as the test generates it.
#[derive(Debug, Clone)]
pub struct Call {
    pub id: String,
    pub route: &'static str,
    pub model: &'static str,
    pub at: DateTime<Utc>,
    pub latency_ms: u64,
    pub error: bool,
    /// The failure's type, for some of the failed calls.
    pub error_type: Option<&'static str>,
    /// Who served it, for two calls in three.
    pub provider: Option<&'static str>,
}

pub const ROUTES: [&str; 2] = ["/chat", "/embed"];
/// The last has no price: its calls are counted as unpriced.
pub const MODELS: [&str; 3] = ["gpt-4o", "gpt-4o-mini", "in-house-llm"];

/// Ten minutes of calls over two routes and three models, starting at an hour boundary three
/// hours ago, so 5-minute and 1-hour buckets split them in known places.
pub fn calls(tenant: &str) -> Vec<Call> {
    let base = (Utc::now() - TimeDelta::hours(3))
        .duration_trunc(TimeDelta::hours(1))
        .unwrap();
    let mut out = Vec::new();
    for minute in 0..10i64 {
        for (r, route) in ROUTES.iter().enumerate() {
            for (m, model) in MODELS.iter().enumerate() {
                let n = (minute as usize + r + 2 * m) % 4 + 1;
                for k in 0..n {
                    let i = out.len() as u64;
                    out.push(Call {
                        id: format!("{tenant}-{i}"),
                        route,
                        model,
                        at: base + TimeDelta::minutes(minute) + TimeDelta::seconds(k as i64 * 7),
                        latency_ms: 40 + (i * 37) % 2000,
                        error: i % 9 == 4,
                        error_type: (i % 18 == 4).then_some("rate_limit"),
                        provider: (!i.is_multiple_of(3)).then_some("openai"),
                    });
                }
            }
        }
    }
    out
}

/// Topics, a consumer group and a tenant of the test's own; the processor binary run on them.
pub struct World {
    pub tenant: String,
    pub pool: PgPool,
    pub dsn: String,
    brokers: String,
    suffix: String,
    processor: Option<Child>,
    /// Settings the processor gets on top of the tests' own.
    pub processor_env: Vec<(&'static str, String)>,
}

impl World {
    pub async fn new() -> Self {
        let dsn = test_support::database_url();
        let brokers = test_support::kafka_brokers();
        let pool = infra::db::connect(&dsn, 2).await.expect("Postgres answers");
        infra::db::migrate(&pool).await.expect("migrations apply");
        Self {
            tenant: unique("tenant-"),
            pool,
            dsn,
            brokers,
            suffix: unique("q"),
            processor: None,
            processor_env: Vec::new(),
        }
    }

    pub fn topic(&self, name: &str) -> String {
        format!("llm.{name}.{}", self.suffix)
    }

    /// The topics of this world: requests, responses, metrics, dlq.
    pub fn topics(&self) -> [String; 4] {
        ["requests", "responses", "metrics", "dlq"].map(|t| self.topic(t))
    }

    pub async fn ensure_topics(&self) {
        let names = self.topics();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        KafkaSettings::new(&self.brokers, 3)
            .ensure_topics(&refs, &refs[..2], Duration::from_secs(10))
            .await
            .expect("topics");
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Sends the calls to the broker and runs the processor until all are stored.
    pub async fn process(&mut self, calls: &[Call]) {
        self.ensure_topics().await;
        let kafka = KafkaSettings::new(&self.brokers, 3);
        let names = self.topics();
        let producer: FutureProducer = kafka
            .producer_config("test", Duration::from_secs(10))
            .create()
            .expect("producer");
        let records: Vec<(String, String, Vec<u8>)> = calls
            .iter()
            .flat_map(|c| {
                let request = json!({"request_id": c.id, "tenant_id": self.tenant, "route": c.route, "model": c.model,
                                     "timestamp": c.at.to_rfc3339(), "prompt_tokens": 100});
                let mut response = json!({"request_id": c.id, "timestamp": (c.at + TimeDelta::seconds(1)).to_rfc3339(),
                                          "latency_ms": c.latency_ms, "completion_tokens": 20, "finish_reason": "stop",
                                          "tenant_id": self.tenant});
                if c.error {
                    response["error"] = json!("upstream 500");
                }
                if let Some(t) = c.error_type {
                    response["error_type"] = json!(t);
                    response["reasoning_tokens"] = json!(3);
                }
                let mut request = request;
                if let Some(p) = c.provider {
                    request["provider"] = json!(p);
                }
                [(names[0].clone(), c.id.clone(), request), (names[1].clone(), c.id.clone(), response)]
            })
            .map(|(t, k, v)| (t, k, serde_json::to_vec(&v).unwrap()))
            .collect();
        let mut sends = Vec::new();
        for (topic, key, payload) in &records {
            sends.push(producer.send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(10),
            ));
        }
        for s in sends {
            s.await.expect("the broker acknowledges");
        }
        self.start_processor();
        let tenant = self.tenant.clone();
        self.wait_stored(&tenant, calls.len() as i64).await;
    }

    /// The ingestion API with keys on this world's topics, running; its base URL.
    pub async fn start_ingestion(&self) -> String {
        let [requests, responses, metrics, dlq] = self.topics();
        let env = [
            ("KAFKA_BROKERS", self.brokers.clone()),
            ("POSTGRES_DSN", self.dsn.clone()),
            ("TOPIC_REQUESTS", requests),
            ("TOPIC_RESPONSES", responses),
            ("TOPIC_METRICS", metrics),
            ("TOPIC_DLQ", dlq),
            ("TOPIC_PARTITIONS", "3".into()),
            ("HTTP_HOST", "127.0.0.1".into()),
            ("HTTP_PORT", "0".into()),
            ("OTLP_GRPC_PORT", "0".into()),
            ("AUTH_MODE", "keys".into()),
            ("API_KEY_CACHE_SECS", "0".into()),
        ];
        let settings = ingestion_api::settings::Settings::from_env(
            metrics_core::settings::Env::from_pairs(env),
        )
        .expect("ingestion settings");
        let ingestion = ingestion_api::startup::Application::build(settings)
            .await
            .expect("the ingestion API starts");
        let base = format!("http://127.0.0.1:{}", ingestion.port());
        tokio::spawn(ingestion.run_until_stopped(std::future::pending()));
        base
    }

    /// Runs the processor binary on this world's topics.
    pub fn start_processor(&mut self) {
        let names = self.topics();
        let port = free_port();
        let env: HashMap<&str, String> = [
            ("KAFKA_BROKERS", self.brokers.clone()),
            ("POSTGRES_DSN", self.dsn.clone()),
            ("TOPIC_REQUESTS", names[0].clone()),
            ("TOPIC_RESPONSES", names[1].clone()),
            ("TOPIC_METRICS", names[2].clone()),
            ("TOPIC_DLQ", names[3].clone()),
            ("TOPIC_ALERTS", self.topic("alerts")),
            ("TOPIC_PARTITIONS", "3".into()),
            ("CONSUMER_GROUP", format!("group-{}", self.suffix)),
            ("HTTP_HOST", "127.0.0.1".into()),
            ("HTTP_PORT", port.to_string()),
            ("COMMIT_INTERVAL_MS", "200".into()),
            ("PARTITION_IDLE_SECS", "1".into()),
            ("WINDOW_GRACE_SECS", "1".into()),
            ("JOIN_TTL_SECS", "65".into()),
            ("RUST_LOG", "warn".into()),
        ]
        .into_iter()
        .chain(self.processor_env.iter().cloned())
        .collect();
        self.processor = Some(
            Command::new(processor_binary())
                .envs(env)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("the processor starts"),
        );
    }

    /// Kills the processor (SIGKILL: no last flush, no leaving the group).
    pub fn kill_processor(&mut self) {
        if let Some(mut p) = self.processor.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// Waits until `tenant` has `requests` stored.
    pub async fn wait_stored(&self, tenant: &str, requests: i64) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let stored: i64 = sqlx::query_scalar(
                "SELECT COALESCE(SUM(requests), 0)::BIGINT FROM llm_metrics WHERE tenant_id = $1",
            )
            .bind(tenant)
            .fetch_one(&self.pool)
            .await
            .unwrap();
            if stored == requests {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the processor stored {stored} of {requests} requests of {tenant}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut p) = self.processor.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// The processor binary, built if it is not yet (it belongs to another package).
fn processor_binary() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "metrics-processor",
            "--bin",
            "metrics-processor",
        ])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cannot build the processor");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/metrics-processor")
}

/// The query API on a free port.
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

impl Api {
    pub async fn start(dsn: &str, auth: bool) -> Self {
        Self::start_with(dsn, auth, &[]).await
    }

    /// Started with `more` settings on top of the tests' own.
    pub async fn start_with(dsn: &str, auth: bool, more: &[(&str, &str)]) -> Self {
        let mut env = vec![
            ("POSTGRES_DSN", dsn),
            ("HTTP_HOST", "127.0.0.1"),
            ("HTTP_PORT", "0"),
            ("AUTH_MODE", if auth { "keys" } else { "disabled" }),
            ("API_KEY_CACHE_SECS", "0"),
            ("CORS_ALLOWED_ORIGINS", "https://dash.example"),
        ];
        env.extend_from_slice(more);
        let settings =
            Settings::from_env(metrics_core::settings::Env::from_pairs(env)).expect("settings");
        let app = Application::build(settings).await.expect("the API starts");
        let base = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped(std::future::pending()));
        Self {
            base,
            client: reqwest::Client::new(),
        }
    }

    /// GET `path_and_query` with an optional key; the status and the JSON body.
    pub async fn get(&self, path_and_query: &str, key: Option<&str>) -> (u16, Value) {
        let mut request = self.client.get(format!("{}{path_and_query}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }
}

/// The names of the fields an error body reports.
pub fn error_fields(body: &Value) -> Vec<String> {
    body["fields"]
        .as_array()
        .map(|f| {
            f.iter()
                .map(|f| f["field"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}
