//! Running the real processor binary on topics, a consumer group and a tenant of the test's own.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use infra::kafka::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use sqlx::{PgPool, Row};

pub use test_support::{free_port, unique};

/// The consumer group session timeout the processors under test run with.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// One test's world: topics, group and tenant nobody else uses.
pub struct World {
    pub brokers: String,
    pub dsn: String,
    pub suffix: String,
    pub tenant: String,
    pub pool: PgPool,
    producer: FutureProducer,
}

impl World {
    pub async fn new() -> Self {
        Self::with_database(test_support::database_url()).await
    }

    pub async fn with_database(dsn: String) -> Self {
        let brokers = test_support::kafka_brokers();
        let pool = infra::db::connect(&dsn, 2).await.expect("Postgres answers");
        infra::db::migrate(&pool).await.expect("migrations apply");
        let suffix = unique("t");
        let kafka = KafkaSettings::new(&brokers, 3);
        let producer = kafka
            .producer_config("test", Duration::from_secs(10))
            .create()
            .expect("producer");
        let world = Self {
            brokers,
            dsn,
            tenant: unique("tenant-"),
            suffix,
            pool,
            producer,
        };
        let topics = world.topics();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        kafka
            .ensure_topics(&names, &names[..2], Duration::from_secs(10))
            .await
            .expect("topics");
        world
    }

    fn topics(&self) -> [String; 4] {
        ["requests", "responses", "metrics", "dlq"].map(|t| format!("llm.{t}.{}", self.suffix))
    }

    pub fn topic(&self, name: &str) -> String {
        format!("llm.{name}.{}", self.suffix)
    }

    pub fn env(&self, port: u16) -> HashMap<String, String> {
        let [requests, responses, metrics, dlq] = self.topics();
        [
            ("KAFKA_BROKERS", self.brokers.clone()),
            ("POSTGRES_DSN", self.dsn.clone()),
            ("TOPIC_REQUESTS", requests),
            ("TOPIC_RESPONSES", responses),
            ("TOPIC_METRICS", metrics),
            ("TOPIC_DLQ", dlq),
            ("TOPIC_PARTITIONS", "3".into()),
            ("CONSUMER_GROUP", format!("group-{}", self.suffix)),
            ("HTTP_HOST", "127.0.0.1".into()),
            ("HTTP_PORT", port.to_string()),
            ("COMMIT_INTERVAL_MS", "200".into()),
            ("PARTITION_IDLE_SECS", "1".into()),
            ("WINDOW_GRACE_SECS", "1".into()),
            ("JOIN_TTL_SECS", "65".into()),
            (
                "KAFKA_SESSION_TIMEOUT_MS",
                SESSION_TIMEOUT.as_millis().to_string(),
            ),
            ("KAFKA_MAX_POLL_INTERVAL_MS", "10000".into()),
            // Longer than the session timeout, as the processor insists.
            ("UNREAD_PARTITION_SECS", "8".into()),
            ("WATCH_INTERVAL_MS", "1000".into()),
            (
                "RUST_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    pub fn request(&self, id: &str, at: DateTime<Utc>, model: &str) -> Value {
        json!({"request_id": id, "tenant_id": self.tenant, "route": "/chat", "model": model,
               "timestamp": at.to_rfc3339(), "prompt_tokens": 100})
    }

    pub fn response(&self, id: &str, at: DateTime<Utc>, latency_ms: u64, error: bool) -> Value {
        // As the ingestion API writes it: stamped with the tenant of the caller's API key.
        let mut r = json!({"request_id": id, "timestamp": at.to_rfc3339(), "latency_ms": latency_ms,
                           "completion_tokens": 20, "finish_reason": "stop", "tenant_id": self.tenant});
        if error {
            r["error"] = json!("upstream 500");
        }
        r
    }

    pub async fn produce_raw(&self, topic: &str, key: &str, payload: &[u8]) {
        let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "x-request-id",
            value: Some(key),
        });
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("the broker acknowledges");
    }

    pub async fn produce(&self, events: &[Value]) {
        let (requests, responses) = (self.topic("requests"), self.topic("responses"));
        let payloads: Vec<(String, String, Vec<u8>)> = events
            .iter()
            .map(|e| {
                let topic = if e.get("latency_ms").is_none() {
                    &requests
                } else {
                    &responses
                };
                (
                    topic.clone(),
                    e["request_id"].as_str().unwrap().to_owned(),
                    serde_json::to_vec(e).unwrap(),
                )
            })
            .collect();
        let mut sends = Vec::new();
        for (topic, key, payload) in &payloads {
            sends.push(self.producer.send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(10),
            ));
        }
        for s in sends {
            s.await.expect("the broker acknowledges");
        }
    }

    /// The tenant's stored windows: (model, window_start) -> (requests, errors, timeouts, completed).
    pub async fn windows(&self) -> HashMap<(String, DateTime<Utc>), (i64, i64, i64, i64)> {
        sqlx::query("SELECT model, window_start, requests, errors, timeouts, completed FROM llm_metrics WHERE tenant_id = $1")
            .bind(&self.tenant)
            .fetch_all(&self.pool)
            .await
            .expect("query")
            .iter()
            .map(|r| {
                ((r.get("model"), r.get("window_start")), (r.get("requests"), r.get("errors"), r.get("timeouts"), r.get("completed")))
            })
            .collect()
    }

    pub async fn total_requests(&self) -> i64 {
        self.windows().await.values().map(|w| w.0).sum()
    }

    /// Waits until `check` holds for the stored windows, or fails after `limit`.
    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        check: impl Fn(&HashMap<(String, DateTime<Utc>), (i64, i64, i64, i64)>) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            let windows = self.windows().await;
            if check(&windows) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; stored: {windows:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The sum of the positions the group has committed, -1 per partition never committed.
    pub async fn committed_position(&self) -> i64 {
        sqlx::query("SELECT COALESCE(SUM(position), 0)::BIGINT AS s FROM processor_positions WHERE consumer_group = $1")
            .bind(format!("group-{}", self.suffix))
            .fetch_one(&self.pool)
            .await
            .expect("query")
            .get("s")
    }

    /// Waits until the group has committed past `before`.
    pub async fn wait_for_commit_beyond(&self, before: i64, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.committed_position().await <= before {
            assert!(Instant::now() < deadline, "the processor made no progress");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every record of a topic: (key, value, headers).
    pub fn read(&self, name: &str) -> Vec<(String, Vec<u8>, HashMap<String, String>)> {
        let topic = self.topic(name);
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", unique("reader"))
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .unwrap();
        let partitions = metadata.topics()[0].partitions().len();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let (mut done, mut out) = (std::collections::HashSet::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(20);
        while done.len() < partitions && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push((
                        String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                        m.payload().unwrap_or_default().to_vec(),
                        headers,
                    ));
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    done.insert(p);
                }
                _ => {}
            }
        }
        out
    }
}

/// The processor binary as a child process.
pub struct Processor {
    child: Child,
    pub port: u16,
}

impl Processor {
    pub fn start(world: &World) -> Self {
        Self::start_with(world, &[])
    }

    /// Starts with settings of its own on top of the world's.
    pub fn start_with(world: &World, settings: &[(&str, &str)]) -> Self {
        let port = free_port();
        let logs = || {
            if std::env::var_os("TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            }
        };
        let child = Command::new(env!("CARGO_BIN_EXE_metrics-processor"))
            .envs(world.env(port))
            .envs(settings.iter().copied())
            .stdout(logs())
            .stderr(logs())
            .spawn()
            .expect("the processor starts");
        Self { child, port }
    }

    /// Runs the processor until it exits by itself (within `limit`): its exit status and
    /// what it logged.
    pub fn run_to_exit(world: &World, limit: Duration) -> (std::process::ExitStatus, String) {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_metrics-processor"))
            .envs(world.env(port))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the processor starts");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                let output = child.wait_with_output().expect("output");
                let mut log = String::from_utf8_lossy(&output.stdout).into_owned();
                log.push_str(&String::from_utf8_lossy(&output.stderr));
                return (status, log);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the processor did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The status code of a GET on the processor's HTTP port, with the body; `None` while
    /// nothing answers.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let status = answer.split_whitespace().nth(1)?.parse().ok()?;
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Some((status, body.to_owned()))
    }

    /// Waits until `/health` answers, as a supervisor's liveness probe would see it.
    pub async fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.get("/health").is_none_or(|(status, _)| status != 200) {
            assert!(Instant::now() < deadline, "the processor did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// kill -9 and nothing else: what a crash is, with a supervisor free to restart at once.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// kill -9: no flush, no goodbye to the group. Returns once the broker has expelled the dead
    /// member (its session timed out), as it would have by the time a supervisor restarts it.
    ///
    /// Tansu 0.6 cannot take a replacement that joins while the dead member is still in the
    /// group: when the dead leader expires between the newcomer's JoinGroup and SyncGroup, it
    /// accepts the newcomer's empty assignment and the group sits formed with no partition owned.
    pub async fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        tokio::time::sleep(SESSION_TIMEOUT + Duration::from_millis(1500)).await;
    }

    /// SIGTERM, and wait for the graceful exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "the processor exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the processor did not stop within 30 s of SIGTERM");
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The start of the minute `minutes_ago` minutes before now, plus `seconds`.
pub fn minute(minutes_ago: i64, seconds: i64) -> DateTime<Utc> {
    let now = Utc::now();
    let start = now
        - TimeDelta::seconds(now.timestamp() % 60)
        - TimeDelta::nanoseconds(now.timestamp_subsec_nanos() as i64);
    start - TimeDelta::minutes(minutes_ago) + TimeDelta::seconds(seconds)
}

/// A PostgreSQL server of the test's own, on a free port, so it can be stopped without
/// disturbing other tests. Uses the server binaries the local stack uses.
pub struct OwnPostgres {
    bin: std::path::PathBuf,
    data: std::path::PathBuf,
    pub port: u16,
}

impl OwnPostgres {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| versions.flatten().map(|v| v.path().join("bin")).find(|b| b.join("initdb").exists()))
            .expect("PostgreSQL server binaries under /usr/lib/postgresql (scripts/stack.sh installs them)");
        let data = std::env::temp_dir().join(unique("streamlens-pg-"));
        std::fs::create_dir_all(&data).unwrap();
        let port = free_port();
        let pg = Self { bin, data, port };
        if pg.as_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&pg.data)
                .status()
                .unwrap();
            assert!(status.success());
        }
        pg.run(
            "initdb",
            &[
                "-D",
                pg.data.to_str().unwrap(),
                "-U",
                "streamlens",
                "--auth=trust",
            ],
        );
        pg.resume();
        pg
    }

    fn as_root(&self) -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false)
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut command = if self.as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let out = command.args(args).output().expect("PostgreSQL tool runs");
        assert!(
            out.status.success(),
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn dsn(&self) -> String {
        format!("postgres://streamlens@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts (again) and waits until it accepts connections.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.data.display()
        );
        let log = self.data.join("log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-o",
                &options,
                "start",
            ],
        );
    }

    /// Stops at once, as a crash or an outage would.
    pub fn halt(&self) {
        self.run(
            "pg_ctl",
            &["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| self.halt());
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
