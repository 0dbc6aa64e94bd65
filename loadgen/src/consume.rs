//! The processor's yardstick: a plain librdkafka consumer reading both input topics from the
//! start to their end, doing nothing with the records; and the last record of each window
//! on a metrics topic, for the fault runs' comparison.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::json;

use crate::{DumpArgs, LatestArgs, TopicArgs};

pub fn run(args: &TopicArgs) -> anyhow::Result<serde_json::Value> {
    let prefix = &args.topic;
    let topics = [format!("{prefix}.requests"), format!("{prefix}.responses")];
    let started = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    read_to_end(&args.brokers.brokers, &topics, |m| {
        records += 1;
        bytes += m.payload().map_or(0, |p| p.len() as u64);
    })?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(
        json!({"mode": "consume", "events": records, "bytes": bytes, "seconds": seconds, "events_per_sec": records as f64 / seconds}),
    )
}

/// `latest --brokers B --topic llm.metrics`: the last record of each window on a metrics
/// topic, as the consumers of that topic would hold it (a JSON array).
pub fn latest(args: &LatestArgs) -> anyhow::Result<serde_json::Value> {
    let topic = args.topic.clone();
    let mut last: BTreeMap<(String, String), serde_json::Value> = BTreeMap::new();
    let mut bad = 0u64;
    read_to_end(&args.brokers.brokers, &[topic], |m| {
        match m.payload().map(serde_json::from_slice::<serde_json::Value>) {
            Some(Ok(row)) => {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let start = row["window_start"].as_str().unwrap_or_default().to_owned();
                // One key stays on one partition, read in order: the later record wins.
                last.insert((key, start), row);
            }
            _ => bad += 1,
        }
    })?;
    anyhow::ensure!(bad == 0, "{bad} records on the metrics topic are not JSON");
    Ok(serde_json::Value::Array(last.into_values().collect()))
}

/// `dump --brokers B --topics T1,T2`: every record of the topics, one JSON line each (topic,
/// partition, offset, key, broker timestamp, the payload as JSON or text), for tracing what a
/// fault run's check found back to the records. Returns how many were written.
pub fn dump(args: &DumpArgs) -> anyhow::Result<serde_json::Value> {
    use std::io::Write;
    let topics = &args.topics;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut records = 0u64;
    let mut failed = None;
    read_to_end(&args.brokers.brokers, topics, |m| {
        let payload = m.payload().unwrap_or_default();
        let payload = serde_json::from_slice::<serde_json::Value>(payload)
            .unwrap_or_else(|_| String::from_utf8_lossy(payload).into());
        let line = json!({
            "topic": m.topic(), "partition": m.partition(), "offset": m.offset(),
            "key": m.key().map(String::from_utf8_lossy),
            "timestamp_ms": m.timestamp().to_millis(), "payload": payload,
        });
        records += 1;
        if let Err(e) = writeln!(out, "{line}") {
            failed.get_or_insert(e);
        }
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    out.flush()?;
    Ok(json!({"mode": "dump", "records": records}))
}

/// Reads every partition of `topics` from the start to its end, handing each record to `f`.
fn read_to_end(
    brokers: &str,
    topics: &[String],
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("streamlens-loadgen-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut partitions = 0;
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for p in metadata.topics()[0].partitions() {
            assignment.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            partitions += 1;
        }
    }
    consumer.assign(&assignment)?;
    // PartitionEOF names the partition only; count ends until every partition reported one.
    let mut ends = 0;
    while ends < partitions {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => f(&m),
            Some(Err(KafkaError::PartitionEOF(_))) => ends += 1,
            Some(Err(e)) => anyhow::bail!("consume failed: {e}"),
            None => {}
        }
    }
    Ok(())
}
