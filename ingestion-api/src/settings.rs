//! Configuration of the ingestion API, read once at start-up.

use std::net::IpAddr;
use std::time::Duration;

use chrono::TimeDelta;
use infra::kafka::{KafkaSettings, Topics};
use infra::keys::AuthSettings;
use metrics_core::settings::{Env, SettingsError};
use metrics_core::validation::Limits;

#[derive(Debug, Clone)]
pub struct Settings {
    pub host: IpAddr,
    /// `0` picks a free port (tests).
    pub port: u16,
    /// OTLP/gRPC (`OTLP_GRPC_PORT`, 4317 as in the OTLP specification); `0` picks a free one.
    pub otlp_grpc_port: u16,
    pub kafka: KafkaSettings,
    pub topics: Topics,
    /// How long a produce may wait for the broker's acknowledgement before the API gives up
    /// and answers 503.
    pub delivery_timeout: Duration,
    /// Upper bound for any HTTP request.
    pub request_timeout: Duration,
    /// How long start-up waits for the broker before failing.
    pub startup_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_batch_items: usize,
    pub limits: Limits,
    pub log_json: bool,
    pub shutdown_timeout: Duration,
    /// API keys (`AUTH_MODE`); they live in Postgres (`POSTGRES_DSN`).
    pub auth: AuthSettings,
    pub dsn: String,
    /// Events a second per API key, and the burst above it; 0 turns the limit off.
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// Threads serving HTTP and gRPC (`WORKER_THREADS`): by default one fewer than the
    /// machine's cores, at least one, which leaves a core to librdkafka's own threads (its
    /// broker threads) instead of having them preempt the workers. Delivery reports are served
    /// on these threads (see `producer`).
    pub worker_threads: usize,
}

/// One fewer than the cores this process may use, at least one.
pub fn default_worker_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cores.saturating_sub(1).max(1)
}

impl Settings {
    pub fn from_env(mut env: Env) -> Result<Self, SettingsError> {
        let e = &mut env;
        let ms = |v: u64| Duration::from_millis(v);
        let settings = Self {
            host: e.parse(&["HTTP_HOST"], IpAddr::from([0, 0, 0, 0])),
            port: e.parse(&["HTTP_PORT"], 8080),
            otlp_grpc_port: e.parse(&["OTLP_GRPC_PORT"], 4317),
            kafka: KafkaSettings::from_env(e),
            topics: Topics::from_env(e),
            delivery_timeout: ms(e.parse(&["KAFKA_DELIVERY_TIMEOUT_MS"], 5_000)),
            request_timeout: ms(e.parse(&["HTTP_REQUEST_TIMEOUT_MS"], 15_000)),
            startup_timeout: Duration::from_secs(e.parse(&["KAFKA_STARTUP_TIMEOUT_SECS"], 30)),
            max_body_bytes: e.parse(&["MAX_BODY_BYTES"], 64 * 1024),
            max_batch_bytes: e.parse(&["MAX_BATCH_BYTES"], 8 * 1024 * 1024),
            max_batch_items: e.parse(&["MAX_BATCH_ITEMS"], 10_000),
            limits: Limits {
                max_future_skew: TimeDelta::seconds(e.parse(&["EVENT_MAX_FUTURE_SKEW_SECS"], 300)),
                max_age: TimeDelta::seconds(e.parse(&["EVENT_MAX_AGE_SECS"], 7 * 24 * 3600)),
                max_latency_ms: e.parse(&["MAX_LATENCY_MS"], 3_600_000),
            },
            log_json: e.log_json(),
            shutdown_timeout: Duration::from_secs(e.parse(&["SHUTDOWN_TIMEOUT_SECS"], 30)),
            auth: AuthSettings::from_env(e),
            dsn: infra::db::dsn_from_env(e),
            rate_per_sec: e.parse(&["RATE_LIMIT_EVENTS_PER_SEC"], 10_000),
            rate_burst: e.parse(&["RATE_LIMIT_BURST"], 20_000),
            worker_threads: e.parse(&["WORKER_THREADS"], default_worker_threads()),
        };
        if settings.worker_threads == 0 {
            e.invalid("WORKER_THREADS must be at least 1");
        }
        if settings.delivery_timeout < Duration::from_millis(100) {
            e.invalid("KAFKA_DELIVERY_TIMEOUT_MS must be at least 100");
        }
        if settings.request_timeout <= settings.delivery_timeout {
            e.invalid("HTTP_REQUEST_TIMEOUT_MS must exceed KAFKA_DELIVERY_TIMEOUT_MS, or a slow broker would look like a client timeout");
        }
        if settings.max_batch_items == 0 || settings.max_body_bytes == 0 {
            e.invalid("MAX_BODY_BYTES and MAX_BATCH_ITEMS must be positive");
        }
        env.finish()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::from_env(Env::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn defaults_match_the_original_service() {
        let s = load(&[]).unwrap();
        assert_eq!(s.port, 8080);
        assert_eq!(s.kafka.brokers, "localhost:9092");
        assert_eq!(s.topics.requests, "llm.requests");
        assert_eq!(s.topics.responses, "llm.responses");
    }

    #[test]
    fn the_original_variable_names_keep_working() {
        let s = load(&[("KAFKA_BROKERS", "k1:9092,k2:9092"), ("HTTP_PORT", "9000")]).unwrap();
        assert_eq!(s.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(s.port, 9000);
    }

    #[test]
    fn contradictory_timeouts_are_refused_with_the_variable_names() {
        let err = load(&[("KAFKA_DELIVERY_TIMEOUT_MS", "20000"), ("HTTP_PORT", "x")]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("HTTP_REQUEST_TIMEOUT_MS"), "{text}");
        assert!(text.contains("HTTP_PORT"), "{text}");
    }
}
