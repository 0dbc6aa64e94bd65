//! The processing loop: one thread polls the consumer and runs the [`Driver`], which holds
//! the commit protocol; this module only wires it to rdkafka and Postgres.
//!
//! Rebalance callbacks run inside `poll` on this same thread, so the driver is never used by
//! two threads at once; the mutex only satisfies librdkafka's `Sync` bound. Postgres and
//! `llm.metrics` calls block on the tokio runtime from here (this thread is not one of its
//! workers). Readiness and the watchdog read a snapshot of what is owned ([`Ownership`]), so
//! they never wait for a commit.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use infra::http::REQUEST_ID_HEADER;
use infra::kafka::Topics;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;

use crate::domain::engine::{Effect, Engine};
use crate::domain::intake;
use crate::domain::offsets::{Input, Source};
use crate::driver::{CommitError, Driver, Outputs};
use crate::metrics::{Metrics, PartitionLabels, ReasonLabels, TopicLabels};
use crate::output::MetricRow;
use crate::reads::{Reads, Take};
use crate::settings::StartFrom;
use crate::store::{Blocking, Store};
use crate::watchdog::Health;

/// The partition pairs this instance owns and those it is still replaying, as of the last
/// assignment, revocation or commit.
#[derive(Debug, Clone, Default)]
pub struct Ownership {
    pub owned: Vec<i32>,
    pub replaying: Vec<i32>,
}

/// Everything the loop and the rebalance callback share.
pub struct Shared {
    driver: Mutex<Driver<Blocking>>,
    ownership: Mutex<Ownership>,
    /// The offsets the consumer hands over, checked for records the broker skipped.
    reads: Mutex<Reads>,
    /// Input partitions to read again from an offset, found by the statistics (which cannot
    /// seek): topic, partition, offset.
    refetch_due: Mutex<Vec<(String, i32, i64)>>,
    /// How far the consumer has fetched each input partition owned here, as the last
    /// statistics said (see [`crate::domain::coverage::Reading::fetched`]).
    fetched: Mutex<HashMap<(Input, i32), i64>>,
    pub store: Store,
    pub runtime: Handle,
    pub metrics: Arc<Metrics>,
    pub producer: ThreadedProducer<DefaultProducerContext>,
    pub topics: Topics,
    pub start_from: StartFrom,
    /// How long windows are kept: older records go to the dead-letter topic.
    pub retention: TimeDelta,
    /// False while Postgres refuses commits.
    pub healthy: AtomicBool,
    /// True while reading is paused (back-pressure while commits fail).
    paused: AtomicBool,
    pub health: Health,
    /// Where each commit's tenants go for their alert rules to be evaluated.
    pub alerts: Mutex<Option<tokio::sync::mpsc::UnboundedSender<crate::alerts::Written>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Dead letters through the producer, counters into the metrics.
struct Out<'a>(&'a Shared);

impl Outputs for Out<'_> {
    fn act(&mut self, effects: Vec<Effect>) {
        self.0.act(effects);
    }

    fn delivered(&mut self) -> Result<(), String> {
        self.0
            .producer
            .flush(Duration::from_secs(10))
            .map_err(|e| e.to_string())
    }
}

impl Shared {
    pub fn new(
        engine: Engine,
        store: Store,
        runtime: Handle,
        producer: ThreadedProducer<DefaultProducerContext>,
        topics: Topics,
        start_from: StartFrom,
        retention: TimeDelta,
    ) -> Self {
        let blocking = Blocking {
            store: store.clone(),
            runtime: runtime.clone(),
        };
        Self {
            driver: Mutex::new(Driver::new(engine, blocking)),
            ownership: Mutex::new(Ownership::default()),
            reads: Mutex::new(Reads::default()),
            refetch_due: Mutex::new(Vec::new()),
            fetched: Mutex::new(HashMap::new()),
            store,
            runtime,
            metrics: Arc::new(Metrics::default()),
            producer,
            topics,
            start_from,
            retention,
            healthy: AtomicBool::new(true),
            paused: AtomicBool::new(false),
            health: Health::default(),
            alerts: Mutex::new(None),
        }
    }

    /// What this instance owns and replays (see [`Ownership`]).
    pub fn ownership(&self) -> Ownership {
        lock(&self.ownership).clone()
    }

    /// Where the consumer has fetched the input partitions owned here to.
    pub fn fetched(&self) -> HashMap<(Input, i32), i64> {
        lock(&self.fetched).clone()
    }

    fn note_ownership(&self, driver: &Driver<Blocking>) {
        *lock(&self.ownership) = Ownership {
            owned: driver.engine().owned(),
            replaying: driver.engine().replaying(),
        };
    }

    fn input(&self, topic: &str) -> Option<Input> {
        if topic == self.topics.requests {
            Some(Input::Requests)
        } else if topic == self.topics.responses {
            Some(Input::Responses)
        } else {
            None
        }
    }

    pub fn topic(&self, input: Input) -> &str {
        match input {
            Input::Requests => &self.topics.requests,
            Input::Responses => &self.topics.responses,
        }
    }

    /// Whether a record is the next one of its input partition. If the broker skipped
    /// records (see [`crate::reads`]), the partition is read again from further back.
    pub fn take(&self, consumer: &BaseConsumer<Context>, message: &BorrowedMessage<'_>) -> bool {
        let Some(input) = self.input(message.topic()) else {
            return false;
        };
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        match lock(&self.reads).record(input, partition, offset) {
            Take::Apply => true,
            Take::Drop => false,
            Take::Refetch(from) => {
                tracing::warn!(
                    topic,
                    partition,
                    offset,
                    from,
                    "the broker skipped records before this one; reading the partition again from further back"
                );
                self.refetch(consumer, topic, partition, from);
                false
            }
        }
    }

    fn refetch(&self, consumer: &BaseConsumer<Context>, topic: &str, partition: i32, from: i64) {
        self.metrics.refetches.inc();
        let at = Offset::Offset(from);
        if let Err(e) = consumer.seek(topic, partition, at, Duration::from_secs(5)) {
            tracing::error!(error = %e, topic, partition, "cannot seek back; trying again later");
        }
    }

    /// Reads again what the statistics found skipped (see [`Reads::fetcher`]).
    pub fn refetch_due(&self, consumer: &BaseConsumer<Context>) {
        let due = std::mem::take(&mut *lock(&self.refetch_due));
        for (topic, partition, from) in due {
            tracing::warn!(
                %topic,
                partition,
                from,
                "the fetcher stands short of the partition's end without records: the broker \
                 skipped a batch; reading the partition again from further back"
            );
            self.refetch(consumer, &topic, partition, from);
        }
    }

    /// One record from an input topic.
    pub fn apply(&self, message: &BorrowedMessage<'_>) {
        let Some(input) = self.input(message.topic()) else {
            return;
        };
        let source = Source {
            input,
            partition: message.partition(),
            offset: message.offset(),
        };
        self.metrics
            .records
            .get_or_create(&TopicLabels {
                topic: message.topic().to_owned(),
            })
            .inc();
        let payload = message.payload().unwrap_or_default();
        let now = Utc::now();
        let written = message
            .timestamp()
            .to_millis()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .unwrap_or(now);
        let parsed = intake::parse(input, payload, written, now, self.retention);
        let mut driver = lock(&self.driver);
        match parsed {
            Ok(event) => {
                let effects = driver.apply(source, event, now);
                drop(driver);
                self.act(effects);
            }
            Err(refused) => {
                driver.skip(source);
                drop(driver);
                // The id the ingestion API answered the client with, so the record can be
                // traced from the client's request to here.
                let request_id = message.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == REQUEST_ID_HEADER)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                });
                let reason = refused.reason(self.retention);
                tracing::warn!(
                    topic = message.topic(),
                    partition = source.partition,
                    offset = source.offset,
                    request_id = request_id.as_deref().unwrap_or("-"),
                    kind = refused.kind(),
                    %reason,
                    "record sent to the dead-letter topic"
                );
                self.dead_letter(
                    message.key(),
                    payload,
                    source,
                    refused.kind(),
                    &reason,
                    request_id.as_deref(),
                );
            }
        }
    }

    fn act(&self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Late => {
                    self.metrics.late_events.inc();
                }
                Effect::Duplicate => {
                    self.metrics.duplicates.inc();
                }
                Effect::DeadLetter {
                    source,
                    key,
                    reason,
                } => {
                    self.metrics.orphans.inc();
                    let body = serde_json::json!({"request_id": key, "reason": reason}).to_string();
                    self.dead_letter(
                        Some(key.as_bytes()),
                        body.as_bytes(),
                        source,
                        "orphan",
                        reason,
                        None,
                    );
                }
            }
        }
    }

    fn dead_letter(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        source: Source,
        kind: &'static str,
        reason: &str,
        request_id: Option<&str>,
    ) {
        self.metrics
            .dead_letters
            .get_or_create(&ReasonLabels { reason: kind })
            .inc();
        let partition = source.partition.to_string();
        let offset = source.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "dlq.reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "dlq.kind",
                value: Some(kind),
            })
            .insert(Header {
                key: "dlq.topic",
                value: Some(self.topic(source.input)),
            })
            .insert(Header {
                key: "dlq.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "dlq.offset",
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: REQUEST_ID_HEADER,
                value: request_id,
            });
        let mut record = BaseRecord::to(&self.topics.dlq)
            .payload(payload)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Err((e, _)) = self.producer.send(record) {
            tracing::error!(error = %e, "cannot queue a dead letter");
        }
    }

    /// Writes what the engine can flush now, or retries the flush Postgres refused last time.
    /// Returns false while it is refused.
    pub fn commit(&self) -> bool {
        let started = Instant::now();
        let result = {
            let mut driver = lock(&self.driver);
            let result = driver.commit(Utc::now(), &mut Out(self));
            self.note_ownership(&driver);
            result
        };
        match result {
            Ok(written) => {
                self.metrics
                    .commit_duration
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.windows_written.inc_by(written.windows as u64);
                if let Some(alerts) = lock(&self.alerts).as_ref() {
                    // Every commit, written or not: it may have moved the watermark that
                    // closes minutes for alert rules. Evaluation runs on its own task; a closed
                    // channel (shutting down) loses nothing that the next start does not
                    // evaluate again.
                    let _ = alerts.send(written.tenants);
                }
                self.healthy.store(true, Ordering::Relaxed);
                self.publish();
                true
            }
            Err(CommitError::Undelivered(e)) => {
                tracing::warn!(error = %e, "dead letters not yet delivered; commit postponed");
                false
            }
            Err(CommitError::Store(e)) => {
                self.metrics.commit_failures.inc();
                self.healthy.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot write to Postgres; pausing and retrying");
                false
            }
        }
    }

    /// Sends window rows whose latest content `llm.metrics` has not seen.
    fn publish(&self) {
        let send = |rows: &[MetricRow]| {
            for row in rows {
                let value = serde_json::to_vec(row).unwrap_or_default();
                let key = row.key();
                self.producer
                    .send(
                        BaseRecord::to(&self.topics.metrics)
                            .key(&key)
                            .payload(&value),
                    )
                    .map_err(|(e, _)| e.to_string())?;
            }
            self.producer
                .flush(Duration::from_secs(10))
                .map_err(|e| e.to_string())
        };
        match self.runtime.block_on(self.store.publish(1000, send)) {
            Ok(published) => {
                self.metrics.published.inc_by(published as u64);
            }
            Err(e) => tracing::warn!(error = %e, "window rows not published; will send again"),
        }
    }

    fn assign(&self, consumer: &BaseConsumer<Context>, tpl: &mut TopicPartitionList) {
        let partitions = partition_pairs(tpl);
        let mut delay = Duration::from_millis(200);
        let starts = loop {
            let result = {
                let mut driver = lock(&self.driver);
                let result = driver.assign(&partitions, Utc::now(), &mut Out(self));
                self.note_ownership(&driver);
                result
            };
            match result {
                Ok(starts) => break starts,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read stored positions; retrying");
                    // Waiting for Postgres is progress as far as the watchdog goes.
                    self.health.beat();
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        let resumes: Vec<String> = starts
            .iter()
            .map(|s| {
                let at = s
                    .offset
                    .map_or("start policy".to_owned(), |o| o.to_string());
                format!("{}/{}@{at}", self.topic(s.input), s.partition)
            })
            .collect();
        // The whole new assignment: nothing read before it counts.
        lock(&self.fetched).clear();
        let mut reads = lock(&self.reads);
        *reads = Reads::default();
        for start in starts {
            reads.started(start.input, start.partition, start.offset);
            let offset = match (start.offset, self.start_from) {
                (Some(resume), _) => Offset::Offset(resume),
                (None, StartFrom::Earliest) => Offset::Beginning,
                (None, StartFrom::Latest) => Offset::End,
            };
            let topic = self.topic(start.input).to_owned();
            if let Err(e) = tpl.set_partition_offset(&topic, start.partition, offset) {
                tracing::error!(error = %e, %topic, partition = start.partition, "cannot set the start offset");
            }
        }
        drop(reads);
        tracing::info!(?partitions, resume = %resumes.join(" "), "partitions assigned");
        if let Err(e) = consumer.assign(tpl) {
            tracing::error!(error = %e, "assign failed");
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Context>, tpl: &TopicPartitionList) {
        let partitions = partition_pairs(tpl);
        let also = {
            let mut driver = lock(&self.driver);
            let also = driver.revoke(&partitions, Utc::now(), &mut Out(self));
            self.note_ownership(&driver);
            also
        };
        let mut reads = lock(&self.reads);
        for &partition in partitions.iter().chain(&also) {
            reads.stopped(partition);
        }
        drop(reads);
        lock(&self.fetched).retain(|(_, p), _| !partitions.contains(p) && !also.contains(p));
        tracing::info!(?partitions, "partitions revoked");
        if !also.is_empty() {
            // Still assigned here but no longer owned: only a new assignment brings them back.
            tracing::error!(partitions = ?also, "partitions given up with a flush that could not be written; rejoining the group");
            self.health.ask_rejoin();
        }
        if let Err(e) = consumer.unassign() {
            tracing::error!(error = %e, "unassign failed");
        }
    }

    /// From librdkafka's statistics (every second, on this thread, inside `poll`): consumer
    /// lag per input partition, and which input partitions are read to their end. The high
    /// watermark there comes from the fetches themselves.
    fn on_statistics(&self, statistics: &Statistics) {
        let mut driver = lock(&self.driver);
        for (topic, t) in &statistics.topics {
            let Some(input) = self.input(topic) else {
                continue;
            };
            for (&partition, p) in &t.partitions {
                // Only partitions being fetched, whose end is known.
                if partition < 0
                    || !driver.engine().owns(partition)
                    || p.fetch_state != "active"
                    || p.hi_offset < 0
                {
                    continue;
                }
                let consumed = driver
                    .engine()
                    .consumed(input, partition)
                    .unwrap_or(p.lo_offset.max(0));
                let lag = (p.hi_offset - consumed).max(0);
                let labels = PartitionLabels {
                    topic: topic.clone(),
                    partition,
                };
                self.metrics.consumer_lag.get_or_create(&labels).set(lag);
                if p.next_offset >= 0 {
                    lock(&self.fetched).insert((input, partition), p.next_offset);
                }
                // The fetcher is at the end and everything fetched has been applied.
                if lag == 0 && p.next_offset >= p.hi_offset {
                    driver.reached_end(input, partition);
                }
                if self.paused.load(Ordering::Relaxed) {
                    continue;
                }
                let floor = p.lo_offset.max(0);
                let fetcher =
                    lock(&self.reads).fetcher(input, partition, p.next_offset, p.hi_offset, floor);
                if let Some(from) = fetcher {
                    lock(&self.refetch_due).push((topic.clone(), partition, from));
                }
            }
        }
    }

    /// Reading resumes after a pause or a stall (see [`Engine::resumed`]).
    fn resumed(&self) {
        lock(&self.driver).resumed(Utc::now());
    }

    pub fn update_gauges(&self) {
        let driver = lock(&self.driver);
        let engine = driver.engine();
        self.metrics
            .pending_halves
            .set(engine.pending_halves() as i64);
        self.metrics.open_windows.set(engine.open_windows() as i64);
    }
}

/// The partition pairs a rebalance names (each for both input topics), in order.
fn partition_pairs(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements()
        .iter()
        .map(|e| e.partition())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The consumer's context: rebalances go through [`Shared`].
#[derive(Debug)]
pub struct Context {
    pub shared: Arc<Shared>,
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        self.shared.on_statistics(&statistics);
    }
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.shared.assign(consumer, tpl)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.shared.revoke(consumer, tpl)
            }
            other => {
                tracing::error!(?other, "rebalance error; dropping the assignment");
                self.shared.revoke(consumer, tpl);
            }
        }
    }
}

/// The pipeline's clocks.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often closed windows and positions are written.
    pub commit_interval: Duration,
    /// How long a rejoin waits between leaving the group and joining it again.
    pub rejoin_after: Duration,
}

/// Polls until `stop` is set (or the processor fails, see [`Health::fail`]), then writes a
/// last flush and leaves the group. `join` makes a consumer subscribed to the input topics;
/// it is called again, for a new member of the group, when the watchdog asks for a rejoin.
pub fn run(
    join: impl Fn() -> KafkaResult<BaseConsumer<Context>>,
    shared: Arc<Shared>,
    timing: Timing,
    stop: Arc<AtomicBool>,
) {
    let Timing {
        commit_interval,
        rejoin_after,
    } = timing;
    let mut consumer = join_retrying(&join, &shared);
    let mut last_commit = Instant::now();
    let mut last_prune: Option<Instant> = None;
    let mut retry_delay = commit_interval;
    let mut last_poll = Instant::now();
    while !stop.load(Ordering::Relaxed) && !shared.health.failed() {
        shared.health.beat();
        if shared.health.rejoin_asked() {
            consumer = rejoin(consumer, &join, &shared, rejoin_after);
            shared.health.rejoined();
            shared.paused.store(false, Ordering::Relaxed);
        }
        let started = Instant::now();
        let polled = consumer.poll(Duration::from_millis(50));
        // A stall (the process stopped and continued, a slow commit): statistics served in
        // this poll may describe the time before it, so silence must be observed afresh.
        let stall = Duration::from_secs(1);
        if started.elapsed() >= stall || started.duration_since(last_poll) >= stall {
            shared.resumed();
        }
        last_poll = Instant::now();
        shared.refetch_due(&consumer);
        if let Some(result) = polled {
            match result {
                Ok(message) => {
                    if shared.take(&consumer, &message) {
                        shared.apply(&message);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "consumer error"),
            }
        }
        if last_commit.elapsed() >= retry_delay {
            let ok = shared.commit();
            // Counted from the end of the commit: one slower than the interval must still
            // leave the interval for reading before the next.
            last_commit = Instant::now();
            // Back-pressure: while Postgres refuses, stop reading so memory stays bounded.
            if let Ok(assignment) = consumer.assignment() {
                let mut paused = shared.paused.load(Ordering::Relaxed);
                if !ok && !paused {
                    paused = consumer.pause(&assignment).is_ok();
                } else if ok && paused {
                    paused = consumer.resume(&assignment).is_err();
                    if !paused {
                        shared.resumed();
                    }
                }
                shared.paused.store(paused, Ordering::Relaxed);
            }
            retry_delay = if ok {
                commit_interval
            } else {
                (retry_delay * 2).min(Duration::from_secs(10))
            };
            shared.update_gauges();
        }
        if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(600)) {
            last_prune = Some(Instant::now());
            match shared.runtime.block_on(
                shared
                    .store
                    .maintain_partitions(Utc::now(), shared.retention),
            ) {
                Ok(p) if p.created == 0 && p.dropped == 0 => {}
                Ok(p) => tracing::info!(
                    created = p.created,
                    dropped = p.dropped,
                    "daily partitions created ahead and dropped beyond the retention"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot maintain the daily partitions"),
            }
        }
    }
    tracing::info!("stopping: writing the last flush");
    for _ in 0..5 {
        if shared.commit() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    leave(&consumer);
    tracing::info!("left the consumer group");
}

/// Unsubscribes and serves the revocation, which writes what can be written.
fn leave(consumer: &BaseConsumer<Context>) {
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(100));
        if consumer.assignment().map_or(true, |a| a.count() == 0) {
            break;
        }
    }
}

/// Leaves the group and joins it again under a new member id, so the coordinator hands out
/// every partition anew (see [`crate::watchdog`]). Between the two it waits `after`, longer
/// than a session: a coordinator that still counts a dead member (Tansu 0.6 does) would give
/// it partitions again in the new generation, and by then its session has expired.
fn rejoin(
    consumer: BaseConsumer<Context>,
    join: &impl Fn() -> KafkaResult<BaseConsumer<Context>>,
    shared: &Shared,
    after: Duration,
) -> BaseConsumer<Context> {
    tracing::warn!(
        wait_ms = after.as_millis() as u64,
        "leaving the consumer group to join it again as a new member"
    );
    leave(&consumer);
    drop(consumer);
    let back = Instant::now() + after;
    while Instant::now() < back {
        shared.health.beat();
        std::thread::sleep(Duration::from_millis(100));
    }
    join_retrying(join, shared)
}

/// A consumer in the group, however long the broker takes to accept one.
fn join_retrying(
    join: &impl Fn() -> KafkaResult<BaseConsumer<Context>>,
    shared: &Shared,
) -> BaseConsumer<Context> {
    loop {
        match join() {
            Ok(consumer) => return consumer,
            Err(e) => {
                tracing::error!(error = %e, "cannot join the consumer group; retrying");
                shared.health.beat();
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}
