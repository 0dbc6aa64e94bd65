//! The processor's state for the partitions it owns, and the rules that make a restart or a
//! rebalance count every event exactly once.
//!
//! Each input partition pair *i* (partition *i* of both topics) has its own joiner, windows and
//! watermark (the minimum of its two inputs): both halves of a request are in the same pair,
//! so a pair read from a backlog is never timed out by the progress of another. A flush closes the windows the watermark has
//! passed and reports, per input partition, the offset consumed so far and the oldest offset
//! still needed. The shell writes both, the closed windows and the timeout/orphan decisions in
//! one transaction.
//!
//! After a restart the shell seeks each input partition to its oldest needed offset and tells
//! the engine what the last commit stored ([`Committed`]). Records below the stored position
//! are replays; the engine rebuilds its state from them but does not count again what that
//! commit already wrote:
//! - a pair whose two records were both consumed before the commit, in a window the commit's
//!   watermark had closed, was written by it;
//! - a timeout or orphan the commit wrote is in the stored decisions;
//! - a half whose deadline (timestamp + TTL) the commit's watermark had passed was settled
//!   and written before that commit, whatever its partner: it only rebuilds the memory of its
//!   request id (its partner may lie below the resume offset and not be replayed at all).
//!   This needs the TTL to be longer than a window plus its grace, so that a settled half's
//!   window had closed too; [`EngineConfig::check`] insists on it. Halves give up on their
//!   partner by how far reading has got, which falls behind the watermark when an old backlog
//!   follows an idle spell: the halves still waiting then although the watermark passed their
//!   deadline are stored with the commit ([`Waiting`]) and are not taken for settled.
//!   A finished id keeps both its records needed until a TTL after its later half, in a
//!   replay as in the first run, so a restart replays both halves of a pair or neither.
//!
//! Everything else derived from replayed records was not written, and is counted now. A
//! partition that is still replaying is not flushed: its stored position and watermark are
//! what the rules above are measured against, and must stay as they are until it has caught up.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use metrics_core::events::Event;
use metrics_core::ids::TenantId;

use super::join::{Ended, Joiner, Outcome, Sourced};
use super::offsets::{Input, Source};
use super::watermark::Watermarks;
use super::window::{Aggregate, WindowKey, Windows};
use metrics_core::pricing::{PricingTable, Tokens};

#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// How long a half waits for its partner, in event time.
    pub ttl: TimeDelta,
    /// How long after its end a window waits for stragglers before it is written.
    pub grace: TimeDelta,
    /// Processing time after which a silent partition stops holding the watermark back.
    pub idle_after: TimeDelta,
    /// Pair a response only with a request of its own tenant (`tenant_id`, which the
    /// ingestion API stamps from the API key). Off, halves pair by `request_id` alone, as
    /// the original service did.
    pub tenant_scoped: bool,
}

impl EngineConfig {
    /// The TTL must outlast a window and its grace (see the module documentation).
    pub fn check(&self) -> Result<(), String> {
        if self.ttl <= super::window::WINDOW + self.grace {
            return Err(format!(
                "the join TTL ({}s) must be longer than one minute plus the grace ({}s)",
                self.ttl.num_seconds(),
                self.grace.num_seconds()
            ));
        }
        if self.grace < TimeDelta::zero() || self.idle_after <= TimeDelta::zero() {
            return Err("the grace must not be negative and the idle time must be positive".into());
        }
        Ok(())
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            ttl: TimeDelta::minutes(5),
            grace: TimeDelta::seconds(2),
            idle_after: TimeDelta::seconds(3),
            tenant_scoped: true,
        }
    }
}

/// How the join knows a half. With tenant-scoped joins it is `tenant|request_id` (`|` can
/// occur in neither), so only halves of one tenant meet: a response posted for another
/// tenant's request waits alone and ends as an orphan, and one without `tenant_id` pairs with
/// nothing. Stored decisions and waiting halves are kept under this key.
fn join_key(event: &Event, tenant_scoped: bool) -> String {
    let id = event.request_id().as_str();
    if !tenant_scoped {
        return id.to_owned();
    }
    let tenant = event.tenant().map_or("", TenantId::as_str);
    format!("{tenant}|{id}")
}

/// What the last successful commit stored for one input partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The next offset to consume after that commit.
    pub position: i64,
    /// The watermark whose closed windows that commit wrote.
    pub watermark: Option<DateTime<Utc>>,
}

/// A timeout or orphan, written with the window rows so that a replay does not repeat it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub request_id: String,
    pub ended: Ended,
    pub source: Source,
    /// The event time of the half it concerns.
    pub at: DateTime<Utc>,
}

/// A half still waiting for its partner at a commit although that commit's watermark had
/// passed its deadline (it was read behind the watermark, in an old backlog after an idle
/// spell). Stored with the commit, so that a replay does not take it for settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub request_id: String,
    pub source: Source,
}

/// Something the shell acts on or counts.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Goes to the dead-letter topic.
    DeadLetter {
        source: Source,
        key: String,
        reason: &'static str,
    },
    /// A contribution to a window that had already been written.
    Late,
    Duplicate,
}

/// Where an input partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub input: Input,
    pub partition: i32,
    /// The next offset to consume.
    pub consumed: i64,
    /// Where a restart must resume: the oldest offset still needed.
    pub resume: i64,
    /// The watermark whose closed windows this flush writes.
    pub watermark: Option<DateTime<Utc>>,
}

/// One commit's worth of output. The closed windows are kept per partition pair, so that
/// the part of a partition taken over by another instance can be left out and the rest still
/// written.
#[derive(Debug, Clone, Default)]
pub struct Flush {
    closed: Vec<(i32, WindowKey, Aggregate)>,
    pub decisions: Vec<Decision>,
    /// For every partition pair in `positions`: its halves waiting behind the watermark,
    /// which replace those stored before.
    pub waiting: Vec<Waiting>,
    pub positions: Vec<Position>,
}

impl Flush {
    /// Each tenant with windows in this flush: whose alert rules are evaluated again once the
    /// flush is written (a late call may have corrected a minute they watch).
    pub fn tenants(&self) -> BTreeSet<Arc<str>> {
        self.closed
            .iter()
            .map(|(_, key, _)| Arc::clone(&key.tenant))
            .collect()
    }

    /// The window rows to add to the stored ones: every partition's part of a window merged.
    pub fn windows(&self) -> Vec<(WindowKey, Aggregate)> {
        let mut rows: HashMap<&WindowKey, Aggregate> = HashMap::new();
        for (_, key, aggregate) in &self.closed {
            match rows.get_mut(key) {
                Some(row) => row.merge(aggregate),
                None => {
                    rows.insert(key, aggregate.clone());
                }
            }
        }
        let mut rows: Vec<(WindowKey, Aggregate)> =
            rows.into_iter().map(|(k, a)| (k.clone(), a)).collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// Leaves out everything of partition pair `partition`: it belongs to another instance
    /// now, which rebuilds it from the stored positions.
    pub fn drop_partition(&mut self, partition: i32) {
        self.closed.retain(|(p, _, _)| *p != partition);
        self.decisions.retain(|d| d.source.partition != partition);
        self.waiting.retain(|w| w.source.partition != partition);
        self.positions.retain(|p| p.partition != partition);
    }
}

#[derive(Debug, Clone)]
struct Partition {
    watermarks: Watermarks,
    joiner: Joiner,
    windows: Windows,
    consumed: HashMap<Input, i64>,
    committed: HashMap<Input, Committed>,
    /// Stored decisions by request id: (timed out, orphaned).
    decided: HashMap<String, (bool, bool)>,
    /// Decisions made since the last flush.
    decisions: Vec<Decision>,
    /// Records the last commit stored as still waiting (see [`Waiting`]).
    waiting: HashSet<Source>,
}

#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    pricing: PricingTable,
    partitions: HashMap<i32, Partition>,
}

impl Engine {
    pub fn new(config: EngineConfig, pricing: PricingTable) -> Self {
        debug_assert!(config.check().is_ok(), "{:?}", config.check());
        Self {
            config,
            pricing,
            partitions: HashMap::new(),
        }
    }

    /// Takes ownership of partition pair `partition`, with what the last commit stored for
    /// each of its two input partitions and the decisions it wrote for them. Returns where to
    /// start reading each input partition.
    pub fn assign(
        &mut self,
        partition: i32,
        stored: [(Input, Option<(Committed, i64)>); 2],
        decisions: Vec<Decision>,
        now: DateTime<Utc>,
    ) {
        let mut state = Partition {
            watermarks: Watermarks::new(self.config.idle_after),
            joiner: Joiner::new(self.config.ttl),
            windows: Windows::new(self.config.grace),
            consumed: HashMap::new(),
            committed: HashMap::new(),
            decided: HashMap::new(),
            decisions: Vec::new(),
            waiting: HashSet::new(),
        };
        for (input, stored) in stored {
            if let Some((committed, resume)) = stored {
                state.committed.insert(input, committed);
                state.consumed.insert(input, resume);
            }
        }
        for d in decisions {
            let entry = state.decided.entry(d.request_id).or_default();
            match d.ended {
                Ended::TimedOut => entry.0 = true,
                Ended::Orphaned => entry.1 = true,
                Ended::Paired => {}
            }
        }
        state.watermarks.assign(partition, now);
        // Windows the last commit closed stay closed, so that what is written from now on is
        // always described by the stored (position, watermark) pairs.
        if let Some(floor) = state.committed.values().filter_map(|c| c.watermark).max() {
            state.watermarks.raise_to(floor);
        }
        self.partitions.insert(partition, state);
    }

    /// After [`Engine::assign`]: the halves the last commit stored as still waiting.
    pub fn still_waiting(&mut self, partition: i32, waiting: impl IntoIterator<Item = Source>) {
        if let Some(state) = self.partitions.get_mut(&partition) {
            state.waiting.extend(waiting);
        }
    }

    /// Gives up partition pair `partition`: everything not yet written is dropped, and the
    /// next owner rebuilds it from the stored positions.
    pub fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    pub fn owns(&self, partition: i32) -> bool {
        self.partitions.contains_key(&partition)
    }

    /// The partition pairs owned, in order.
    pub fn owned(&self) -> Vec<i32> {
        let mut owned: Vec<i32> = self.partitions.keys().copied().collect();
        owned.sort_unstable();
        owned
    }

    /// Owned partition pairs not yet read up to their stored positions.
    pub fn replaying(&self) -> Vec<i32> {
        let mut replaying: Vec<i32> = self
            .partitions
            .iter()
            .filter(|(_, state)| state.replaying())
            .map(|(&p, _)| p)
            .collect();
        replaying.sort_unstable();
        replaying
    }

    pub fn pending_halves(&self) -> usize {
        self.partitions
            .values()
            .map(|p| p.joiner.pending_requests() + p.joiner.pending_responses())
            .sum()
    }

    pub fn open_windows(&self) -> usize {
        self.partitions
            .values()
            .map(|p| p.windows.open_windows())
            .sum()
    }

    /// The consumer read an input partition to its end.
    pub fn reached_end(&mut self, input: Input, partition: i32) {
        if let Some(state) = self.partitions.get_mut(&partition) {
            state.watermarks.reached_end((input, partition));
        }
    }

    /// Reading resumes after a pause or a stall: see [`Watermarks::resumed`].
    pub fn resumed(&mut self, now: DateTime<Utc>) {
        for state in self.partitions.values_mut() {
            state.watermarks.resumed(now);
        }
    }

    /// The next offset to consume in an input partition, as far as the engine knows.
    pub fn consumed(&self, input: Input, partition: i32) -> Option<i64> {
        self.partitions
            .get(&partition)?
            .consumed
            .get(&input)
            .copied()
    }

    /// Moves past a record that cannot be used (it went to the dead-letter topic).
    pub fn skip(&mut self, source: Source) {
        if let Some(state) = self.partitions.get_mut(&source.partition) {
            let position = state.consumed.entry(source.input).or_insert(source.offset);
            *position = (*position).max(source.offset + 1);
        }
    }

    /// Applies one valid record of a partition this engine owns.
    pub fn apply(&mut self, source: Source, event: Event, now: DateTime<Utc>) -> Vec<Effect> {
        let Some(state) = self.partitions.get_mut(&source.partition) else {
            return Vec::new();
        };
        let key = join_key(&event, self.config.tenant_scoped);
        let position = state.consumed.entry(source.input).or_insert(source.offset);
        *position = (*position).max(source.offset + 1);
        let replayed = state
            .committed
            .get(&source.input)
            .is_some_and(|c| source.offset < c.position);
        let timestamp = match &event {
            Event::Request(r) => r.timestamp,
            Event::Response(r) => r.timestamp,
        };
        // A half read when both topics had already been read more than a TTL past it is too
        // late to be joined. A replayed one was judged by the run that read it first (its
        // decision is stored).
        let too_late = !replayed
            && state
                .watermarks
                .read_to()
                .is_some_and(|p| timestamp + self.config.ttl < p);
        state
            .watermarks
            .observe((source.input, source.partition), timestamp, now);
        let decided = if replayed {
            state.decided.get(key.as_str()).copied().unwrap_or_default()
        } else {
            (false, false)
        };
        let settled = replayed
            && !state.waiting.contains(&source)
            && state
                .committed
                .get(&source.input)
                .and_then(|c| c.watermark)
                .is_some_and(|w| timestamp + self.config.ttl < w);
        let mut outcomes = Vec::new();
        let outcome = match event {
            Event::Request(request) if too_late => {
                outcomes.extend(state.joiner.too_late_request(
                    &key,
                    Sourced {
                        source,
                        value: request,
                    },
                ));
                None
            }
            Event::Response(response) if too_late => {
                outcomes.extend(state.joiner.too_late_response(
                    &key,
                    Sourced {
                        source,
                        value: response,
                    },
                ));
                None
            }
            Event::Request(request) if decided.0 => {
                state
                    .joiner
                    .restore(&key, Ended::TimedOut, source, request.timestamp);
                None
            }
            Event::Response(response) if decided.1 => {
                state
                    .joiner
                    .restore(&key, Ended::Orphaned, source, response.timestamp);
                None
            }
            Event::Request(request) if settled => {
                state
                    .joiner
                    .restore(&key, Ended::Paired, source, request.timestamp);
                None
            }
            Event::Response(response) if settled => state.joiner.restore_settled_response(
                &key,
                Sourced {
                    source,
                    value: response,
                },
            ),
            Event::Request(request) => state.joiner.on_request(
                &key,
                Sourced {
                    source,
                    value: request,
                },
            ),
            Event::Response(response) => state.joiner.on_response(
                &key,
                Sourced {
                    source,
                    value: response,
                },
            ),
        };
        outcomes.extend(outcome);
        // Event time moves on with every record, not only at commits: what is given up, and
        // when, must not depend on when commits happen.
        if let Some(p) = state.watermarks.progress(now) {
            let replaying = state.replaying();
            outcomes.extend(state.joiner.advance(p, replaying));
        }
        let mut effects = Vec::new();
        for outcome in outcomes {
            self.handle(source.partition, outcome, &mut effects);
        }
        effects
    }

    fn handle(&mut self, partition: i32, outcome: Outcome, effects: &mut Vec<Effect>) {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        match outcome {
            Outcome::Paired { request, response } => {
                let key = state
                    .windows
                    .key_of(&request.value.names, request.value.timestamp);
                if state.already_written(&key, request.source, response.source) {
                    return;
                }
                let cost = self.pricing.cost(
                    &request.value.names.model,
                    request.value.timestamp,
                    Tokens::of(request.value.prompt_tokens, &response.value),
                );
                let late = state
                    .windows
                    .add(key, &[request.source, response.source], |a| {
                        a.record_paired(
                            request.value.prompt_tokens,
                            request.value.names.provider.as_deref(),
                            &response.value,
                            cost,
                        );
                    });
                if late {
                    effects.push(Effect::Late);
                }
            }
            Outcome::TimedOut(request) => {
                let key = state
                    .windows
                    .key_of(&request.value.names, request.value.timestamp);
                let provider = request.value.names.provider.as_deref();
                if state
                    .windows
                    .add(key, &[request.source], |a| a.record_timeout(provider))
                {
                    effects.push(Effect::Late);
                }
                state.decisions.push(Decision {
                    request_id: request.value.request_id.to_string(),
                    ended: Ended::TimedOut,
                    source: request.source,
                    at: request.value.timestamp,
                });
            }
            Outcome::Orphaned {
                id,
                response,
                reason,
            } => {
                effects.push(Effect::DeadLetter {
                    source: response.source,
                    key: response.value.request_id.into_string(),
                    reason: reason.as_str(),
                });
                state.decisions.push(Decision {
                    request_id: id.to_string(),
                    ended: Ended::Orphaned,
                    source: response.source,
                    at: response.value.timestamp,
                });
            }
            Outcome::Duplicate(_) => effects.push(Effect::Duplicate),
        }
    }

    /// Lets event time advance: halves past their TTL become timeouts and orphans. What
    /// decides is how far the records being read have got, not the watermark that closes
    /// windows: that one stays ahead after an idle spell, and old pairs read then would have
    /// their requests timed out before their responses were read.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        let mut effects = Vec::new();
        let partitions: Vec<i32> = self.partitions.keys().copied().collect();
        for partition in partitions {
            let outcomes = match self.partitions.get_mut(&partition) {
                Some(state) => {
                    let Some(progress) = state.watermarks.progress(now) else {
                        continue;
                    };
                    let replaying = state.replaying();
                    state.joiner.advance(progress, replaying)
                }
                None => continue,
            };
            for outcome in outcomes {
                self.handle(partition, outcome, &mut effects);
            }
        }
        effects
    }

    /// Closes what each partition's watermark has passed and says where every input
    /// partition stands. Partitions still replaying are left out. The shell writes the result
    /// in one transaction and then calls [`Engine::committed`].
    pub fn flush(&mut self, now: DateTime<Utc>) -> (Flush, Vec<Effect>) {
        let effects = self.tick(now);
        let mut flush = Flush::default();
        for (&partition, state) in &mut self.partitions {
            if state.replaying() {
                continue;
            }
            let watermark = state.watermarks.current(now);
            if let Some(w) = watermark {
                for (key, aggregate) in state.windows.close(w) {
                    flush.closed.push((partition, key, aggregate));
                }
            }
            flush.decisions.append(&mut state.decisions);
            if let Some(w) = watermark {
                flush.waiting.extend(
                    state
                        .joiner
                        .waiting_before(w)
                        .into_iter()
                        .map(|(request_id, source)| Waiting { request_id, source }),
                );
            }
            for (&input, &consumed) in &state.consumed {
                let oldest = [
                    state.joiner.needed().min(input, partition),
                    state.windows.needed().min(input, partition),
                ]
                .into_iter()
                .flatten()
                .min();
                flush.positions.push(Position {
                    input,
                    partition,
                    consumed,
                    resume: oldest.map_or(consumed, |o| o.min(consumed)),
                    watermark,
                });
            }
        }
        flush.positions.sort_by_key(|p| (p.partition, p.input));
        (flush, effects)
    }

    /// The flush was written: from now on its positions and watermark are what a replay
    /// would be measured against.
    pub fn committed(&mut self, flush: &Flush) {
        for p in &flush.positions {
            if let Some(state) = self.partitions.get_mut(&p.partition) {
                state.waiting.clear();
                state.waiting.extend(
                    flush
                        .waiting
                        .iter()
                        .filter(|w| w.source.partition == p.partition)
                        .map(|w| w.source),
                );
                state.committed.insert(
                    p.input,
                    Committed {
                        position: p.consumed,
                        watermark: p.watermark,
                    },
                );
            }
        }
    }
}

impl Partition {
    /// Whether an input partition has not yet been read up to the stored position.
    fn replaying(&self) -> bool {
        self.committed.iter().any(|(input, c)| {
            self.consumed
                .get(input)
                .is_none_or(|&consumed| consumed < c.position)
        })
    }

    /// Whether the last commit already wrote this pair (see the module documentation).
    fn already_written(&self, key: &WindowKey, request: Source, response: Source) -> bool {
        let before = |s: Source| {
            self.committed
                .get(&s.input)
                .filter(|c| s.offset < c.position)
                .and_then(|c| c.watermark)
        };
        match (before(request), before(response)) {
            (Some(w), Some(_)) => self.windows.closes_by(key.start, w),
            _ => false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
