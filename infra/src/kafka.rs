//! Kafka plumbing shared by the services: topic names, producer guarantees, topic creation,
//! and the partitioner that keeps both halves of a request on one partition.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use metrics_core::settings::Env;

mod security;

/// Topic names; every one can be renamed for shared clusters or tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub requests: String,
    pub responses: String,
    pub metrics: String,
    pub dlq: String,
    /// Alert transitions, keyed `tenant|rule`.
    pub alerts: String,
}

impl Topics {
    pub fn from_env(env: &mut Env) -> Self {
        Self {
            requests: env.string(&["TOPIC_REQUESTS"], "llm.requests"),
            responses: env.string(&["TOPIC_RESPONSES"], "llm.responses"),
            metrics: env.string(&["TOPIC_METRICS"], "llm.metrics"),
            dlq: env.string(&["TOPIC_DLQ"], "llm.dlq"),
            alerts: env.string(&["TOPIC_ALERTS"], "llm.alerts"),
        }
    }

    /// The two input topics, which must be co-partitioned.
    pub fn inputs(&self) -> [&str; 2] {
        [&self.requests, &self.responses]
    }
}

/// Broker connection settings shared by every client.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    pub brokers: String,
    /// Partitions for topics created at start-up.
    pub partitions: i32,
    pub replication_factor: i32,
    /// TLS and SASL properties from the `KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_*` and
    /// `KAFKA_SSL_*` variables (see [`security`]).
    pub security: Vec<(String, String)>,
    /// librdkafka properties applied to every client after all others (`KAFKA_CONFIG`,
    /// `key=value;key=value`), e.g. `debug=eos,msg` while investigating.
    pub extra: Vec<(String, String)>,
}

/// Secrets (`sasl.password`, `ssl.key.password`, ...) show as `***`.
impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |properties: &[(String, String)]| -> Vec<(String, String)> {
            properties
                .iter()
                .map(|(k, v)| {
                    let v = if security::is_secret(k) { "***" } else { v };
                    (k.clone(), v.to_owned())
                })
                .collect()
        };
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("security", &redacted(&self.security))
            .field("extra", &redacted(&self.extra))
            .finish()
    }
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>, partitions: i32) -> Self {
        Self {
            brokers: brokers.into(),
            partitions,
            replication_factor: 1,
            security: Vec::new(),
            extra: Vec::new(),
        }
    }

    pub fn from_env(env: &mut Env) -> Self {
        let mut settings = Self {
            brokers: env.string(&["KAFKA_BROKERS"], "localhost:9092"),
            partitions: env.parse(&["TOPIC_PARTITIONS"], 6),
            replication_factor: env.parse(&["TOPIC_REPLICATION_FACTOR"], 1),
            security: security::from_env(env),
            extra: Vec::new(),
        };
        for pair in env
            .string(&["KAFKA_CONFIG"], "")
            .split(';')
            .filter(|p| !p.trim().is_empty())
        {
            match pair.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    settings.extra.push((k.trim().into(), v.trim().into()))
                }
                _ => env.invalid(format!("KAFKA_CONFIG: {pair:?} is not key=value")),
            }
        }
        if settings.partitions < 1 {
            env.invalid("TOPIC_PARTITIONS must be at least 1");
        }
        if settings.replication_factor < 1 {
            env.invalid("TOPIC_REPLICATION_FACTOR must be at least 1");
        }
        settings
    }

    /// Every client's configuration: the connection, tunable defaults, TLS and SASL, then
    /// the operator's `KAFKA_CONFIG` on top.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for (key, value) in self.security.iter().chain(&self.extra) {
            config.set(key, value);
        }
        config
    }

    /// A producer that only reports success once every in-sync replica has the record, never
    /// duplicates on retry, and partitions keys exactly as the Java client does. These
    /// guarantees are set last, so `KAFKA_CONFIG` can tune batching but not weaken them.
    pub fn producer_config(&self, client_id: &str, delivery_timeout: Duration) -> ClientConfig {
        let mut config = self.client_config(&[
            ("client.id", client_id),
            // Every produce waits this long for company before it is sent, and the API's answer
            // waits for the produce: 1 ms keeps single events fast, while batch requests
            // bring their own batching (measured: 5 ms doubled single-event p50 and left the
            // batch rate unchanged).
            ("linger.ms", "1"),
            ("socket.keepalive.enable", "true"),
        ]);
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set(
                "message.timeout.ms",
                delivery_timeout.as_millis().to_string(),
            );
        config
    }

    fn admin(&self) -> Result<AdminClient<DefaultClientContext>, TopicError> {
        self.client_config(&[])
            .create()
            .map_err(|e| TopicError::Broker(e.to_string()))
    }

    /// Creates missing topics with `self.partitions` partitions, then checks that all of
    /// `co_partitioned` have the same partition count, which it returns (0 for none).
    pub async fn ensure_topics(
        &self,
        topics: &[&str],
        co_partitioned: &[&str],
        timeout: Duration,
    ) -> Result<usize, TopicError> {
        let admin = self.admin()?;
        let new: Vec<_> = topics
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    self.partitions,
                    TopicReplication::Fixed(self.replication_factor),
                )
            })
            .collect();
        let options = AdminOptions::new()
            .operation_timeout(Some(timeout))
            .request_timeout(Some(timeout));
        let results = admin
            .create_topics(&new, &options)
            .await
            .map_err(|e| TopicError::Broker(e.to_string()))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(TopicError::Create { topic, code }),
            }
        }
        let mut counts = Vec::new();
        for topic in co_partitioned {
            counts.push((
                topic.to_string(),
                partition_count(admin.inner(), topic, timeout)?,
            ));
        }
        if counts.windows(2).any(|w| w[0].1 != w[1].1) {
            return Err(TopicError::NotCoPartitioned(counts));
        }
        Ok(counts.first().map_or(0, |c| c.1))
    }
}

/// Partitions of `topic` as the broker reports them, through any client.
pub fn partition_count<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<usize, TopicError> {
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| TopicError::Broker(e.to_string()))?;
    match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len()),
        _ => Err(TopicError::Missing(topic.to_owned())),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("cannot reach the Kafka broker: {0}")]
    Broker(String),
    #[error("cannot create topic {topic}: {code}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("topic {0} does not exist")]
    Missing(String),
    #[error(
        "topics are not co-partitioned {0:?}: llm.requests and llm.responses need the same \
         partition count so that both halves of a request reach the same processor; \
         recreate one of them or add partitions to match"
    )]
    NotCoPartitioned(Vec<(String, usize)>),
}

/// Kafka's murmur2 hash, as in the Java client's `Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h = SEED ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client (and librdkafka's `murmur2_random`) picks for a key.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secured() -> KafkaSettings {
        let mut env = Env::from_pairs([
            ("KAFKA_BROKERS", "broker-1:9093"),
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
            ("KAFKA_SASL_USERNAME", "streamlens"),
            ("KAFKA_SASL_PASSWORD", "s3cret"),
            (
                "KAFKA_CONFIG",
                "sasl.mechanism=SCRAM-SHA-512;client.rack=eu-1",
            ),
        ]);
        let settings = KafkaSettings::from_env(&mut env);
        env.finish().expect("valid settings");
        settings
    }

    #[test]
    fn security_reaches_every_client_and_kafka_config_has_the_last_word() {
        let config = secured().producer_config("t", Duration::from_secs(5));
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.username"), Some("streamlens"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("client.rack"), Some("eu-1"));
        assert_eq!(config.get("acks"), Some("all"));
        // librdkafka refuses `sasl_ssl` and SCRAM at creation when built without OpenSSL;
        // creating the client (it connects lazily) proves the build supports both.
        let created: Result<rdkafka::producer::BaseProducer, _> = config.create();
        assert!(created.is_ok(), "{:?}", created.err());
    }

    #[test]
    fn secrets_do_not_reach_a_log() {
        let shown = format!("{:?}", secured());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("sasl.password") && shown.contains("***"),
            "{shown}"
        );
    }

    #[test]
    fn murmur2_matches_the_java_client_test_vectors() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input),
                expected,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn partitions_are_always_in_range() {
        for i in 0..1000 {
            let p = partition_for(format!("req-{i}").as_bytes(), 7);
            assert!((0..7).contains(&p));
        }
    }
}
