//! The processor watching itself and its group, on a thread of its own.
//!
//! - **Unread input.** Every few seconds it reads the group's stored positions from Postgres,
//!   every input partition's end from the broker and how far its own consumer has fetched the
//!   partitions it owns, and asks [`Coverage`] which partitions nobody reads. While there are any, readiness is false, `unread_partitions` says which,
//!   and an error names them; once they have stood still for the limit, the pipeline leaves
//!   the group and joins it again as a new member, which makes the coordinator hand out every
//!   partition anew. This is what brings back partitions that a broker left with a dead
//!   member (Tansu 0.6 does, see the README); on Kafka and Redpanda it does not happen.
//! - **A stuck pipeline.** The pipeline thread beats at every turn of its loop and while it
//!   waits for Postgres. Without a beat for the stall limit, readiness goes false; after twice
//!   that the process exits, so that its supervisor starts a fresh one.
//! - **A changed input layout.** Partitions added to a live input topic move keys to other
//!   partitions, and the halves of a request could then be read by different owners. The
//!   processor stops with an error that says what to do, instead of joining wrongly.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use infra::kafka::partition_count;
use rdkafka::producer::Producer;

use crate::domain::coverage::{Coverage, Reading};
use crate::domain::offsets::Input;
use crate::metrics::PartitionLabels;
use crate::pipeline::{lock, Shared};

/// What the pipeline and the watchdog tell each other and readiness.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds after `started` of the pipeline's last beat.
    beat: AtomicU64,
    stalled: AtomicBool,
    rejoin: AtomicBool,
    unread: Mutex<BTreeSet<i32>>,
    /// Set with `fatal`, so the pipeline's loop checks an atomic, not a lock, per record.
    failing: AtomicBool,
    fatal: Mutex<Option<String>>,
    /// Woken when the processor must stop by itself (see [`Health::fail`]).
    pub failed: tokio::sync::Notify,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            beat: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            rejoin: AtomicBool::new(false),
            unread: Mutex::new(BTreeSet::new()),
            failing: AtomicBool::new(false),
            fatal: Mutex::new(None),
            failed: tokio::sync::Notify::new(),
        }
    }
}

impl Health {
    /// The pipeline is alive and making progress.
    pub fn beat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.beat.store(ms, Ordering::Relaxed);
    }

    fn since_beat(&self) -> Duration {
        let last = Duration::from_millis(self.beat.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Whether the watchdog asks for a rejoin; it stays asked until [`Health::rejoined`].
    pub fn rejoin_asked(&self) -> bool {
        self.rejoin.load(Ordering::Relaxed)
    }

    /// Asks the pipeline to leave the group and join it again as a new member.
    pub fn ask_rejoin(&self) {
        self.rejoin.store(true, Ordering::Relaxed);
    }

    /// The pipeline is back in the group as a new member.
    pub fn rejoined(&self) {
        self.rejoin.store(false, Ordering::Relaxed);
    }

    /// Stops the processor with an error: the pipeline writes what it can and leaves, and
    /// the process exits non-zero with `reason`.
    pub fn fail(&self, reason: String) {
        tracing::error!(%reason, "stopping the processor");
        *lock(&self.fatal) = Some(reason);
        self.failing.store(true, Ordering::Relaxed);
        self.failed.notify_one();
    }

    /// Whether [`Health::fail`] was called.
    pub fn failed(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    pub fn failure(&self) -> Option<String> {
        lock(&self.fatal).clone()
    }
}

/// Ready means: Postgres takes commits, the pipeline polls, every input partition is read by
/// someone, and this instance owns partitions and has finished replaying them.
pub fn readiness(shared: &Shared) -> Result<(), String> {
    let health = &shared.health;
    if let Some(reason) = health.failure() {
        return Err(reason);
    }
    if health.stalled.load(Ordering::Relaxed) {
        return Err(format!(
            "the pipeline has not polled for {} s",
            health.since_beat().as_secs()
        ));
    }
    if !shared.healthy.load(Ordering::Relaxed) {
        return Err("Postgres refused the last commit; retrying".into());
    }
    let unread = lock(&health.unread).clone();
    if !unread.is_empty() {
        return Err(format!(
            "input partitions {unread:?} are read by no instance of the group; rejoining"
        ));
    }
    let ownership = shared.ownership();
    if ownership.owned.is_empty() {
        return Err("this instance owns no input partition".into());
    }
    let replaying = ownership.replaying;
    if !replaying.is_empty() {
        return Err(format!(
            "replaying partitions {replaying:?} after taking them over"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
pub struct WatchSettings {
    /// How often the group's positions and the topics' ends are read.
    pub every: Duration,
    /// How long a partition may stand still behind its end before the group is rejoined.
    pub unread_after: TimeDelta,
    /// How long the pipeline may go without a beat.
    pub stall: Duration,
}

/// Watches until `stop` is set.
pub fn run(shared: Arc<Shared>, settings: WatchSettings, partitions: i32, stop: Arc<AtomicBool>) {
    let mut coverage = Coverage::new(settings.unread_after);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        check_stall(&shared.health, settings.stall);
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + settings.every;
        if let Err(problem) = check_layout(&shared, partitions) {
            shared.health.fail(problem);
            return;
        }
        let readings = match read(&shared, partitions) {
            // While this instance's own commits fail, every owner is stalled alike: what
            // stands still then says nothing about who reads what.
            Ok(_) if !shared.healthy.load(Ordering::Relaxed) => None,
            Ok(readings) => Some(readings),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the group's positions or the topics' ends");
                None
            }
        };
        // Nor while this instance is out of the group to rejoin it.
        let Some(mut readings) = readings.filter(|_| !shared.health.rejoin_asked()) else {
            coverage.restart();
            continue;
        };
        // A partition this instance is replaying is being read, though its position waits.
        let replaying = shared.ownership().replaying;
        readings.retain(|r| !replaying.contains(&r.partition));
        let verdict = coverage.observe(&readings, Utc::now());
        for r in &readings {
            let unread = verdict.unread.contains(&(r.input, r.partition));
            shared
                .metrics
                .unread_partitions
                .get_or_create(&PartitionLabels {
                    topic: shared.topic(r.input).to_owned(),
                    partition: r.partition,
                })
                .set(i64::from(unread));
        }
        *lock(&shared.health.unread) = verdict.partitions.clone();
        if !verdict.unread.is_empty() {
            shared.metrics.rejoins.inc();
            let detail: Vec<String> = readings
                .iter()
                .filter(|r| verdict.unread.contains(&(r.input, r.partition)))
                .map(|r| {
                    let stored = r.stored.map_or("none".into(), |p| p.to_string());
                    let topic = shared.topic(r.input);
                    let fetched = r
                        .fetched
                        .map_or(String::new(), |f| format!(", fetched here to {f}"));
                    format!(
                        "{topic}/{}: stored {stored}{fetched}, end {}",
                        r.partition, r.end
                    )
                })
                .collect();
            tracing::error!(
                partitions = ?verdict.partitions,
                owned_here = ?shared.ownership().owned,
                detail = %detail.join(", "),
                unread_secs = settings.unread_after.num_seconds(),
                "input partitions are read by no instance of the group: their stored positions \
                 stand still while records wait; leaving and rejoining the group"
            );
            shared.health.ask_rejoin();
            // The rejoin hands out partitions anew: give the new owners the full limit.
            coverage.restart();
        }
    }
}

fn check_stall(health: &Health, stall: Duration) {
    let quiet = health.since_beat();
    let stalled = quiet >= stall;
    if stalled && !health.stalled.swap(true, Ordering::Relaxed) {
        tracing::error!(secs = quiet.as_secs(), "the pipeline has stopped polling");
    } else if !stalled {
        health.stalled.store(false, Ordering::Relaxed);
    }
    if quiet >= stall * 2 {
        tracing::error!(
            secs = quiet.as_secs(),
            "the pipeline has not polled for twice the stall limit: exiting for the supervisor"
        );
        std::process::exit(70);
    }
}

fn check_layout(shared: &Shared, partitions: i32) -> Result<(), String> {
    for input in [Input::Requests, Input::Responses] {
        let topic = shared.topic(input);
        // A broker that does not answer now says nothing about the layout.
        let Ok(now) = partition_count(shared.producer.client(), topic, Duration::from_secs(5))
        else {
            continue;
        };
        if now as i32 != partitions {
            return Err(layout_changed(topic, partitions, now as i32));
        }
    }
    Ok(())
}

/// The error for an input topic whose partition count differs from the group's state.
pub fn layout_changed(topic: &str, was: i32, now: i32) -> String {
    format!(
        "{topic} has {now} partitions but this consumer group's state was built on {was}: \
         keys now map to other partitions, so a request and its response could be read by \
         different owners. Give both input topics the same count, then either start a new \
         CONSUMER_GROUP, or drain the old one (stop producers until the lag is 0) and delete \
         its rows from processor_layout"
    )
}

fn read(shared: &Shared, partitions: i32) -> Result<Vec<Reading>, String> {
    let stored = shared
        .runtime
        .block_on(shared.store.positions())
        .map_err(|e| e.to_string())?;
    let client = shared.producer.client();
    let fetched = shared.fetched();
    let mut readings = Vec::new();
    for input in [Input::Requests, Input::Responses] {
        let topic = shared.topic(input);
        for partition in 0..partitions {
            let (start, end) = client
                .fetch_watermarks(topic, partition, Duration::from_secs(5))
                .map_err(|e| format!("{topic}/{partition}: {e}"))?;
            let position = stored
                .iter()
                .find(|s| s.input == input && s.partition == partition);
            readings.push(Reading {
                input,
                partition,
                stored: position.and_then(|s| s.position),
                epoch: position.map_or(0, |s| s.epoch),
                start,
                end,
                fetched: fetched.get(&(input, partition)).copied(),
            });
        }
    }
    Ok(readings)
}
