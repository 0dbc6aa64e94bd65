//! The commit protocol, written once: the order in which partitions are claimed, records
//! applied, flushes written and partitions let go. It is synchronous and generic over where
//! positions and windows are kept ([`PositionStore`]) and over what carries dead letters
//! ([`Outputs`]). The binary runs it with Postgres and the Kafka producer (see
//! [`crate::pipeline`]); the simulations run the very same code with [`memory::MemoryStore`],
//! and one contract suite holds both stores to the same behaviour.
//!
//! The rules it keeps:
//! - A flush is written whole or not at all, under the epochs its partitions were claimed
//!   with. One that Postgres did not accept is kept and retried as it is, under the same id,
//!   so a retry of a commit that went through unanswered writes nothing more; nothing new is
//!   flushed meanwhile.
//! - A partition taken over by another instance (its epoch moved on) is dropped, from the
//!   engine and from the flush, and the rest of the flush is written.
//! - Dead letters are delivered before the positions that move past their records.
//! - A partition is let go only after what can be written of it is written; a kept flush that
//!   still cannot be written is given up whole, with every partition it holds, since the
//!   engine has already handed its closed windows over to it.
//! - An assignment is the whole new assignment. What this instance still holds when one
//!   arrives without a revocation first (or with a flush still unwritten) is let go first, by
//!   the rule above, so that nothing of its previous state is written under the new claim's
//!   epochs: another instance may have owned and written those partitions in between, and a
//!   kept flush written under the new claim would slip past the fencing and count again what
//!   that instance wrote.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use metrics_core::events::Event;

use crate::domain::engine::{Decision, Effect, Engine, Flush};
use crate::domain::offsets::{Input, Source};
use crate::store::{Claim, StoreError};

pub mod memory;

/// The epoch each owned input partition was claimed with.
pub type Epochs = HashMap<(Input, i32), i64>;

/// What a claim returns for a set of partition pairs.
#[derive(Debug, Clone, Default)]
pub struct Claimed {
    pub claims: Vec<Claim>,
    /// The stored timeouts and orphans.
    pub decisions: Vec<Decision>,
    /// Records stored as still waiting behind the watermark.
    pub waiting: Vec<Source>,
}

/// Where positions, decisions and window rows are kept.
pub trait PositionStore {
    /// Takes ownership of partition pairs: raises their epochs, so a commit of a previous
    /// owner fails from now on, and returns what they hold.
    fn claim(&mut self, partitions: &[i32]) -> Result<Claimed, StoreError>;

    /// Writes one flush atomically, or nothing: [`StoreError::Fenced`] if a partition's
    /// epoch moved on. A second commit under the same `id` writes nothing more. Returns how
    /// many window rows the flush holds.
    fn commit(&mut self, flush: &Flush, epochs: &Epochs, id: &str) -> Result<usize, StoreError>;
}

/// Where the effects of records and flushes go.
pub trait Outputs {
    /// Counters and dead letters (queued, not yet acknowledged).
    fn act(&mut self, effects: Vec<Effect>);

    /// Returns once every dead letter handed to [`Outputs::act`] is acknowledged.
    fn delivered(&mut self) -> Result<(), String>;
}

/// Where to start reading an input partition after a claim: the stored resume offset, or
/// the start policy's choice when nothing is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub input: Input,
    pub partition: i32,
    pub offset: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("dead letters not delivered: {0}")]
    Undelivered(String),
    #[error(transparent)]
    Store(StoreError),
}

/// What a successful commit wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub windows: usize,
    /// Each tenant written to.
    pub tenants: BTreeSet<Arc<str>>,
    /// Partitions dropped because another instance had claimed them.
    pub fenced: Vec<i32>,
}

#[derive(Debug)]
pub struct Driver<S> {
    engine: Engine,
    store: S,
    epochs: Epochs,
    /// A flush the store has not accepted yet, with its id.
    pending: Option<(String, Flush)>,
    flushes: u64,
    /// Names this instance's flush ids.
    instance: String,
}

impl<S: PositionStore> Driver<S> {
    pub fn new(engine: Engine, store: S) -> Self {
        Self {
            engine,
            store,
            epochs: Epochs::new(),
            pending: None,
            flushes: 0,
            instance: uuid::Uuid::new_v4().to_string(),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Takes `partitions` as this instance's whole new assignment (the eager protocol the
    /// processor's range assignor uses): claims them and sets the engine up from what they
    /// hold. Returns where to read each input partition from. On an error nothing is owned;
    /// call again.
    pub fn assign(
        &mut self,
        partitions: &[i32],
        now: DateTime<Utc>,
        out: &mut impl Outputs,
    ) -> Result<Vec<Start>, StoreError> {
        let partitions: Vec<i32> = partitions
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // Whatever is still held belongs to the previous assignment, revoked or not.
        let held: Vec<i32> = self
            .engine
            .owned()
            .into_iter()
            .chain(
                self.pending
                    .iter()
                    .flat_map(|(_, f)| f.positions.iter().map(|p| p.partition)),
            )
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !held.is_empty() {
            tracing::warn!(partitions = ?held, "assigned while still holding partitions; letting them go first");
            self.revoke(&held, now, out);
        }
        let Claimed {
            claims,
            decisions,
            waiting,
        } = self.store.claim(&partitions)?;
        let mut starts = Vec::with_capacity(claims.len());
        for &partition in &partitions {
            let mine = |input| {
                claims
                    .iter()
                    .find(|c| c.partition == partition && c.input == input)
            };
            let stored = [Input::Requests, Input::Responses]
                .map(|input| (input, mine(input).and_then(|c| c.stored)));
            let own = decisions
                .iter()
                .filter(|d| d.source.partition == partition)
                .cloned()
                .collect();
            self.engine.assign(partition, stored, own, now);
            self.engine.still_waiting(
                partition,
                waiting.iter().filter(|s| s.partition == partition).copied(),
            );
        }
        for claim in &claims {
            self.epochs
                .insert((claim.input, claim.partition), claim.epoch);
            starts.push(Start {
                input: claim.input,
                partition: claim.partition,
                offset: claim.stored.map(|(_, resume)| resume),
            });
        }
        Ok(starts)
    }

    /// Lets partition pairs go after writing what can be written. Returns the partitions
    /// given up besides those asked for: a flush that could not be written is given up whole.
    pub fn revoke(
        &mut self,
        partitions: &[i32],
        now: DateTime<Utc>,
        out: &mut impl Outputs,
    ) -> Vec<i32> {
        let mut gone: BTreeSet<i32> = partitions.iter().copied().collect();
        let mut also = Vec::new();
        if let Err(e) = self.commit(now, out) {
            tracing::warn!(error = %e, "cannot write before letting partitions go; the next owner replays them");
            if let Some((_, flush)) = self.pending.take() {
                for p in flush.positions.iter().map(|p| p.partition) {
                    if gone.insert(p) {
                        also.push(p);
                    }
                }
            }
        }
        for &partition in &gone {
            self.engine.revoke(partition);
        }
        self.epochs.retain(|(_, p), _| !gone.contains(p));
        also.sort_unstable();
        also.dedup();
        also
    }

    /// Applies one valid record.
    pub fn apply(&mut self, source: Source, event: Event, now: DateTime<Utc>) -> Vec<Effect> {
        self.engine.apply(source, event, now)
    }

    /// The consumer read an input partition to its end.
    pub fn reached_end(&mut self, input: Input, partition: i32) {
        self.engine.reached_end(input, partition);
    }

    /// Reading resumes after a pause or a stall (see [`Engine::resumed`]).
    pub fn resumed(&mut self, now: DateTime<Utc>) {
        self.engine.resumed(now);
    }

    /// Moves past a record that went to the dead-letter topic.
    pub fn skip(&mut self, source: Source) {
        self.engine.skip(source);
    }

    /// Writes what the engine can flush now, after the flush the store refused last time if
    /// there is one.
    pub fn commit(
        &mut self,
        now: DateTime<Utc>,
        out: &mut impl Outputs,
    ) -> Result<Written, CommitError> {
        let mut written = Written::default();
        // A kept flush first, then a fresh one: what the engine closed meanwhile is written
        // now too (at shutdown there is no later commit).
        for round in 0..2 {
            let kept = self.pending.is_some();
            if round == 1 {
                // The store refused until now, so the shell had stopped reading: what the
                // statistics said meanwhile ("read to the end", silence) was its own doing.
                // Without this the fresh flush would let the clock give up on halves whose
                // partners are still unread.
                self.engine.resumed(now);
            }
            if !kept {
                let (flush, effects) = self.engine.flush(now);
                out.act(effects);
                self.flushes += 1;
                let id = format!("{}-{}", self.instance, self.flushes);
                self.pending = Some((id, flush));
            }
            // Dead letters first: positions must not move past a record whose letter is lost.
            out.delivered().map_err(CommitError::Undelivered)?;
            self.write_pending(&mut written)?;
            if !kept {
                break;
            }
        }
        Ok(written)
    }

    /// Writes the kept flush, without the partitions other instances have claimed since.
    fn write_pending(&mut self, written: &mut Written) -> Result<(), CommitError> {
        while let Some((id, flush)) = self.pending.as_mut() {
            match self.store.commit(flush, &self.epochs, id) {
                Ok(windows) => {
                    written.tenants.extend(flush.tenants());
                    self.engine.committed(flush);
                    self.pending = None;
                    written.windows += windows;
                }
                Err(StoreError::Fenced { topic, partition }) => {
                    tracing::warn!(%topic, partition, "partition taken over by another instance; dropping it");
                    // The other partitions' windows were closed for this flush and are
                    // nowhere else: write them without the lost partition.
                    flush.drop_partition(partition);
                    self.engine.revoke(partition);
                    self.epochs.retain(|(_, p), _| *p != partition);
                    written.fenced.push(partition);
                }
                Err(e) => return Err(CommitError::Store(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
