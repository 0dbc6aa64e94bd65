//! Malformed records straight onto the input topics, past the ingestion API: what a buggy or
//! hostile producer with broker access could write. The processor must send each to the
//! dead-letter topic and go on.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

use crate::PoisonArgs;

/// The bodies: not JSON, not UTF-8, empty, huge, deeply nested, and JSON of the wrong shape.
pub fn bodies() -> Vec<(&'static str, Vec<u8>)> {
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let huge = json!({"request_id": "x".repeat(900_000)}).to_string();
    vec![
        ("not json", b"hello, processor".to_vec()),
        (
            "truncated json",
            br#"{"request_id": "p-1", "tenant_id": "#.to_vec(),
        ),
        ("invalid utf-8", vec![b'{', 0xff, 0xfe, 0xfd, b'}']),
        ("empty", Vec::new()),
        ("deep nesting", nested.into_bytes()),
        ("huge field", huge.into_bytes()),
        ("json array", b"[1, 2, 3]".to_vec()),
        ("json null", b"null".to_vec()),
        (
            "wrong types",
            json!({"request_id": 7, "tenant_id": [], "route": {}, "model": true,
                   "timestamp": "yesterday", "prompt_tokens": "many"})
            .to_string()
            .into_bytes(),
        ),
        (
            "out of range",
            json!({"request_id": "p-2", "tenant_id": "t", "route": "/r", "model": "m",
                   "timestamp": "2020-01-01T00:00:00Z", "prompt_tokens": -5,
                   "latency_ms": 1e300, "completion_tokens": 18446744073709551616u128 as f64})
            .to_string()
            .into_bytes(),
        ),
        ("missing fields", b"{}".to_vec()),
    ]
}

/// `poison --brokers B --topic PREFIX`: every body, with and without a key, on both
/// `PREFIX.requests` and `PREFIX.responses`.
pub async fn run(args: &PoisonArgs) -> anyhow::Result<Value> {
    let brokers = &args.brokers.brokers;
    let prefix = &args.topic;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "2000000")
        .create()?;
    let mut sent = 0u64;
    for topic in [format!("{prefix}.requests"), format!("{prefix}.responses")] {
        for (i, (name, body)) in bodies().into_iter().enumerate() {
            for keyed in [true, false] {
                let key = format!("poison-{i}");
                let mut record = FutureRecord::<String, Vec<u8>>::to(&topic).payload(&body);
                if keyed {
                    record = record.key(&key);
                }
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("{name} to {topic}: {e}"))?;
                sent += 1;
            }
        }
    }
    Ok(json!({"mode": "poison", "records": sent}))
}
