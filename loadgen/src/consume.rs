//! The processor's yardstick: a plain librdkafka consumer reading both input topics from the
//! start to their end, doing nothing with the records.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;

use crate::Args;

pub fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    let brokers = args.text("brokers", "127.0.0.1:9092");
    let prefix = args.text("topic", "bench.raw");
    let topics = [format!("{prefix}.requests"), format!("{prefix}.responses")];
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set(
            "group.id",
            format!("streamlens-loadgen-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut partitions = 0;
    for topic in &topics {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for p in metadata.topics()[0].partitions() {
            assignment.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            partitions += 1;
        }
    }
    let started = Instant::now();
    consumer.assign(&assignment)?;
    let (mut records, mut bytes) = (0u64, 0u64);
    // PartitionEOF names the partition only; count ends until every partition reported one.
    let mut ends = 0;
    while ends < partitions {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                records += 1;
                bytes += rdkafka::Message::payload(&m).map_or(0, |p| p.len() as u64);
            }
            Some(Err(KafkaError::PartitionEOF(_))) => ends += 1,
            Some(Err(e)) => anyhow::bail!("consume failed: {e}"),
            None => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(
        json!({"mode": "consume", "events": records, "bytes": bytes, "seconds": seconds, "events_per_sec": records as f64 / seconds}),
    )
}
