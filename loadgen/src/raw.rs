//! The yardstick: a plain librdkafka producer straight to the broker, the way librdkafka's
//! own performance tool drives it: produce as fast as the local queue allows, count the
//! delivery reports on the polling thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde_json::json;

use infra::kafka::KafkaSettings;

use crate::{events, RawArgs};

#[derive(Default)]
struct Counter {
    delivered: AtomicUsize,
    failed: AtomicUsize,
}

impl ClientContext for Counter {}

impl ProducerContext for Counter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let slot = if result.is_ok() {
            &self.delivered
        } else {
            &self.failed
        };
        slot.fetch_add(1, Ordering::Relaxed);
    }
}

pub async fn run(args: &RawArgs) -> anyhow::Result<serde_json::Value> {
    let brokers = args.brokers.brokers.clone();
    // The same work as the ingestion API does: requests and responses to two topics.
    let prefix = &args.topic;
    let topics = [format!("{prefix}.requests"), format!("{prefix}.responses")];
    let total = args.events;
    let partitions = args.partitions;
    let kafka = KafkaSettings::new(brokers, partitions);
    let names = [topics[0].as_str(), topics[1].as_str()];
    kafka
        .ensure_topics(&names, &names, Duration::from_secs(10))
        .await?;
    // The ingestion API's own producer settings: idempotent, acks=all, murmur2.
    let producer: ThreadedProducer<Counter> = kafka
        .producer_config("streamlens-loadgen", Duration::from_secs(60))
        .create_with_context(Counter::default())?;
    let run = events::run_tag();
    // Serialized up front: the yardstick measures the broker path only.
    let payloads: Vec<(&str, String, Vec<u8>)> = (0..total)
        .map(|i| {
            let (topic, event) = if i.is_multiple_of(2) {
                (&topics[0], events::request(&run, i / 2))
            } else {
                (&topics[1], events::response(&run, i / 2))
            };
            let key = format!("{run}-{}", i / 2);
            (
                topic.as_str(),
                key,
                serde_json::to_vec(&event).unwrap_or_default(),
            )
        })
        .collect();

    let started = Instant::now();
    for (topic, key, payload) in &payloads {
        let mut record = BaseRecord::to(topic).key(key).payload(payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, returned))
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) =>
                {
                    record = returned;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err((e, _)) => anyhow::bail!("produce failed: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    let seconds = started.elapsed().as_secs_f64();
    let context = producer.context();
    let delivered = context.delivered.load(Ordering::Relaxed);
    Ok(json!({
        "mode": "raw",
        "events": total,
        "failed": context.failed.load(Ordering::Relaxed),
        "seconds": seconds,
        "events_per_sec": delivered as f64 / seconds,
    }))
}
