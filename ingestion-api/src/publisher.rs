//! The durable write to Kafka.
//!
//! Handlers see only [`Publisher`]: hand over records, get one result per record once the
//! broker has acknowledged it or the delivery deadline has passed. [`KafkaPublisher`] is the
//! real one; handler tests swap in their own.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext};
use tokio::sync::Notify;

use infra::http::REQUEST_ID_HEADER;
use infra::kafka::{KafkaSettings, Topics};
use metrics_core::events::EventKind;

use crate::producer::ServedProducer;

/// One record to write: which input topic, the key (`request_id`) and the event JSON.
#[derive(Debug, Clone)]
pub struct Record {
    pub kind: EventKind,
    pub key: String,
    pub payload: Vec<u8>,
    /// The HTTP request id, carried in the `x-request-id` header (shared by a batch).
    pub trace_id: Option<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("the broker did not acknowledge the record in time")]
    Timeout,
    #[error("the producer queue is full")]
    QueueFull,
    #[error("the broker refused the record: {0}")]
    Refused(String),
}

impl PublishError {
    /// Label for the `produce_errors` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            PublishError::Timeout => "timeout",
            PublishError::QueueFull => "queue_full",
            PublishError::Refused(_) => "refused",
        }
    }
}

pub trait Publisher: Send + Sync + 'static {
    /// Writes every record; the result at position `i` belongs to `records[i]`. Resolves
    /// only when each record is acknowledged or has definitely failed.
    fn publish<'a>(&'a self, records: &'a [Record])
        -> BoxFuture<'a, Vec<Result<(), PublishError>>>;

    /// Whether the broker answers and the topics exist.
    fn ready(&self) -> BoxFuture<'_, Result<(), String>>;

    /// Waits for everything queued to be delivered, up to `timeout`.
    fn flush(&self, timeout: Duration) -> BoxFuture<'_, ()>;
}

/// Writes to Kafka with `acks=all`, idempotence and the murmur2 partitioner.
pub struct KafkaPublisher {
    settings: KafkaSettings,
    topics: Topics,
    delivery_timeout: Duration,
    // Replaced after a failed delivery; see `replace`.
    producer: RwLock<Arc<KafkaProducer>>,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("brokers", &self.settings.brokers)
            .finish()
    }
}

impl KafkaPublisher {
    pub fn new(
        settings: KafkaSettings,
        topics: Topics,
        delivery_timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let producer = Self::create(&settings, delivery_timeout)?;
        Ok(Self {
            settings,
            topics,
            delivery_timeout,
            producer: RwLock::new(producer),
        })
    }

    fn create(
        settings: &KafkaSettings,
        delivery_timeout: Duration,
    ) -> Result<Arc<KafkaProducer>, KafkaError> {
        let config = settings.producer_config("streamlens-ingestion", delivery_timeout);
        KafkaProducer::create(&config, Deliveries)
    }

    fn producer(&self) -> Arc<KafkaProducer> {
        Arc::clone(&self.producer.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Swaps in a fresh producer after `used` timed out delivering or failed fatally.
    ///
    /// An idempotent producer is bound to a producer id the broker handed out. A broker that
    /// lost that state (a restart of a broker without durable storage, or an expired id) can
    /// leave librdkafka retrying forever with an id the broker no longer accepts, and a fatal
    /// error makes it refuse everything. A new producer gets a new id. Records of the old one
    /// were already reported as failed, so nothing is claimed written that was not; requests
    /// still using it keep it alive until they finish. Each producer is replaced at most once,
    /// so during an outage this happens at most once per delivery timeout.
    fn replace(&self, used: &Arc<KafkaProducer>, fatal: bool) {
        let mut slot = self.producer.write().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&slot, used) {
            return; // another request already replaced it
        }
        if fatal {
            tracing::error!("Kafka producer failed fatally; replacing it");
        } else {
            tracing::warn!("Kafka producer timed out delivering; replacing it");
        }
        match Self::create(&self.settings, self.delivery_timeout) {
            Ok(fresh) => *slot = fresh,
            Err(e) => tracing::error!(error = %e, "cannot create a new Kafka producer"),
        }
    }
}

type KafkaProducer = ServedProducer<Deliveries>;

/// Receives librdkafka's delivery reports (on the runtime, see [`ServedProducer`]) and files
/// each under the batch it belongs to.
struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<(Arc<Batch>, usize)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (batch, index) = *opaque;
        batch.complete(
            index,
            result.as_ref().map(|_| ()).map_err(|(e, _)| classify(e)),
        );
    }
}

const PENDING: u8 = 0;
const DELIVERED: u8 = 1;
const FAILED: u8 = 2;

/// The outcome of one `publish` call, filled in by delivery reports. The waiting request is
/// woken once, when the last record is settled, not once per record.
struct Batch {
    states: Vec<AtomicU8>,
    failures: Mutex<Vec<(usize, PublishError)>>,
    remaining: AtomicUsize,
    done: Notify,
}

impl Batch {
    fn new(len: usize) -> Self {
        Self {
            states: (0..len).map(|_| AtomicU8::new(PENDING)).collect(),
            failures: Mutex::new(Vec::new()),
            remaining: AtomicUsize::new(len),
            done: Notify::new(),
        }
    }

    fn complete(&self, index: usize, outcome: Result<(), PublishError>) {
        match outcome {
            Ok(()) => self.states[index].store(DELIVERED, Ordering::Release),
            Err(e) => {
                self.failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((index, e));
                self.states[index].store(FAILED, Ordering::Release);
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // notify_one keeps a permit if nobody waits yet, so the wake-up is never lost.
            self.done.notify_one();
        }
    }

    async fn finished(&self) {
        if self.remaining.load(Ordering::Acquire) > 0 {
            self.done.notified().await;
        }
    }

    /// One result per record; a record still pending counts as timed out.
    fn results(&self) -> Vec<Result<(), PublishError>> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        self.states
            .iter()
            .enumerate()
            .map(|(i, state)| match state.load(Ordering::Acquire) {
                DELIVERED => Ok(()),
                FAILED => Err(failures
                    .iter()
                    .find(|(at, _)| *at == i)
                    .map_or(PublishError::Timeout, |(_, e)| e.clone())),
                _ => Err(PublishError::Timeout),
            })
            .collect()
    }
}

fn classify(error: &KafkaError) -> PublishError {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => PublishError::Timeout,
        Some(RDKafkaErrorCode::QueueFull) => PublishError::QueueFull,
        _ => PublishError::Refused(error.to_string()),
    }
}

impl Publisher for KafkaPublisher {
    fn publish<'a>(
        &'a self,
        records: &'a [Record],
    ) -> BoxFuture<'a, Vec<Result<(), PublishError>>> {
        Box::pin(async move {
            let producer = self.producer();
            // librdkafka fails a record at message.timeout.ms; the extra margin only guards
            // against a lost callback. Whatever has not answered by then counts as not written.
            let deadline =
                tokio::time::Instant::now() + self.delivery_timeout + Duration::from_secs(2);
            let batch = Arc::new(Batch::new(records.len()));
            // Every record is handed over before waiting, so a batch is pipelined through the
            // producer rather than written one round trip at a time.
            for (i, r) in records.iter().enumerate() {
                let topic = match r.kind {
                    EventKind::Request => &self.topics.requests,
                    EventKind::Response => &self.topics.responses,
                };
                let mut record =
                    BaseRecord::with_opaque_to(topic, Box::new((Arc::clone(&batch), i)))
                        .key(r.key.as_str())
                        .payload(r.payload.as_slice());
                if let Some(id) = &r.trace_id {
                    record = record.headers(OwnedHeaders::new().insert(Header {
                        key: REQUEST_ID_HEADER,
                        value: Some(id.as_bytes()),
                    }));
                }
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((e, returned))
                            if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
                                && tokio::time::Instant::now() < deadline =>
                        {
                            // The local queue is full: wait for deliveries to make room.
                            record = returned;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err((e, _)) => {
                            batch.complete(i, Err(classify(&e)));
                            break;
                        }
                    }
                }
            }
            let _ = tokio::time::timeout_at(deadline, batch.finished()).await;
            let results = batch.results();
            let fatal = producer.client().fatal_error().is_some();
            let timed_out = results.iter().any(|r| r == &Err(PublishError::Timeout));
            if fatal || timed_out {
                self.replace(&producer, fatal);
            }
            results
        })
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let producer = self.producer();
            let topics = [self.topics.requests.clone(), self.topics.responses.clone()];
            let check = tokio::task::spawn_blocking(move || {
                let metadata = producer
                    .client()
                    .fetch_metadata(None, Duration::from_secs(2))
                    .map_err(|e| {
                        tracing::warn!(error = %e, "not ready: no metadata from the broker");
                        "the broker does not answer".to_owned()
                    })?;
                for topic in &topics {
                    let found = metadata
                        .topics()
                        .iter()
                        .any(|t| t.name() == topic && !t.partitions().is_empty());
                    if !found {
                        return Err(format!("topic {topic} is missing"));
                    }
                }
                Ok(())
            });
            check.await.map_err(|e| e.to_string())?
        })
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let producer = self.producer();
            let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
            match flushed {
                Ok(Ok(())) => tracing::info!("producer flushed"),
                Ok(Err(e)) => tracing::error!(error = %e, "producer flush incomplete"),
                Err(e) => tracing::error!(error = %e, "producer flush task failed"),
            }
        })
    }
}
