//! Configuration of the metrics processor, read once at start-up.

use std::net::IpAddr;
use std::time::Duration;

use chrono::TimeDelta;
use infra::kafka::{KafkaSettings, Topics};
use metrics_core::settings::{Env, SettingsError};

use crate::domain::engine::EngineConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub topics: Topics,
    pub group: String,
    pub dsn: String,
    pub engine: EngineConfig,
    /// How often closed windows and positions are written.
    pub commit_interval: Duration,
    /// Where a group with no stored position starts reading.
    pub start_from: StartFrom,
    /// How long the group waits for a silent member before giving its partitions away.
    pub session_timeout: Duration,
    /// How long a member may go without polling (also the rebalance timeout it announces).
    pub max_poll_interval: Duration,
    /// Static group membership (KIP-345): a restarted instance with the same id takes its
    /// place in the group at once, without waiting for the session timeout.
    pub instance_id: Option<String>,
    /// How long an input partition may wait behind a stored position that stands still
    /// before the instance rejoins the group (see `watchdog`).
    pub unread_after: TimeDelta,
    /// How often the group's positions and the topics' ends are read.
    pub watch_interval: Duration,
    pub pricing_file: Option<String>,
    /// URL prefixes alert webhooks may go to (`ALERT_WEBHOOK_ALLOWED`); none by default.
    pub webhook_allowed: Vec<String>,
    pub retention: TimeDelta,
    pub host: IpAddr,
    /// Health, readiness and Prometheus metrics.
    pub port: u16,
    pub log_json: bool,
}

/// `@hostname` stands for the host's name: a container's or pod's, stable across restarts of
/// the same container, distinct between replicas.
fn instance_id(value: &str) -> String {
    if value != "@hostname" {
        return value.to_owned();
    }
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| value.to_owned())
}

impl Settings {
    pub fn from_env(mut env: Env) -> Result<Self, SettingsError> {
        let e = &mut env;
        let secs = |v: i64| TimeDelta::seconds(v);
        let start_from = match e.string(&["PROCESSOR_START_FROM"], "earliest").as_str() {
            "earliest" => StartFrom::Earliest,
            "latest" => StartFrom::Latest,
            other => {
                e.invalid(format!(
                    "PROCESSOR_START_FROM={other:?}: expected earliest or latest"
                ));
                StartFrom::Earliest
            }
        };
        let settings = Self {
            kafka: KafkaSettings::from_env(e),
            topics: Topics::from_env(e),
            group: e.string(&["CONSUMER_GROUP"], "streamlens-metrics-processor"),
            dsn: infra::db::dsn_from_env(e),
            engine: EngineConfig {
                ttl: secs(e.parse(&["JOIN_TTL_SECS"], 300)),
                grace: secs(e.parse(&["WINDOW_GRACE_SECS"], 2)),
                idle_after: secs(e.parse(&["PARTITION_IDLE_SECS"], 3)),
                tenant_scoped: e.string(&["JOIN_SCOPE"], "tenant") == "tenant",
            },
            commit_interval: Duration::from_millis(e.parse(&["COMMIT_INTERVAL_MS"], 1000)),
            start_from,
            session_timeout: Duration::from_millis(e.parse(&["KAFKA_SESSION_TIMEOUT_MS"], 10_000)),
            max_poll_interval: Duration::from_millis(
                e.parse(&["KAFKA_MAX_POLL_INTERVAL_MS"], 60_000),
            ),
            instance_id: e
                .raw(&["KAFKA_GROUP_INSTANCE_ID"])
                .map(|(_, v)| instance_id(&v)),
            unread_after: secs(e.parse(&["UNREAD_PARTITION_SECS"], 30)),
            watch_interval: Duration::from_millis(e.parse(&["WATCH_INTERVAL_MS"], 5000)),
            pricing_file: e.raw(&["PRICING_FILE"]).map(|(_, v)| v),
            webhook_allowed: metrics_core::alerts::allow_list(
                &e.string(&["ALERT_WEBHOOK_ALLOWED"], ""),
            ),
            retention: TimeDelta::days(e.parse(&["RETENTION_DAYS"], 30)),
            host: e.parse(&["HTTP_HOST"], IpAddr::from([0, 0, 0, 0])),
            port: e.parse(&["HTTP_PORT"], 9091),
            log_json: e.log_json(),
        };
        if let Err(problem) = settings.engine.check() {
            e.invalid(format!(
                "JOIN_TTL_SECS / WINDOW_GRACE_SECS / PARTITION_IDLE_SECS: {problem}"
            ));
        }
        if !matches!(
            e.string(&["JOIN_SCOPE"], "tenant").as_str(),
            "tenant" | "request_id"
        ) {
            e.invalid("JOIN_SCOPE must be \"tenant\" or \"request_id\"");
        }
        if settings.unread_after.to_std().unwrap_or_default() <= settings.session_timeout {
            e.invalid(
                "UNREAD_PARTITION_SECS must be longer than KAFKA_SESSION_TIMEOUT_MS: until a \
                 dead member's session expires its partitions wait for it by design",
            );
        }
        if settings.watch_interval.is_zero() {
            e.invalid("WATCH_INTERVAL_MS must be positive");
        }
        if settings.commit_interval.is_zero() {
            e.invalid("COMMIT_INTERVAL_MS must be positive");
        }
        env.finish()?;
        Ok(settings)
    }
}
