//! A [`PositionStore`] in memory, with the semantics of the Postgres one (the contract suite in
//! `tests/api/contract.rs` runs the same cases against both), and faults to inject: a commit
//! refused, or one that went through while its answer was lost.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SubsecRound, Utc};

use super::{Claimed, Epochs, PositionStore};
use crate::domain::engine::{Committed, Decision, Flush};
use crate::domain::join::Ended;
use crate::domain::offsets::{Input, Source};
use crate::domain::window::{Aggregate, WindowKey};
use crate::store::{Claim, StoreError};

/// What the next store call does instead of its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fails and writes nothing (the database is away).
    Refuse,
    /// Writes everything, then fails as if the connection dropped before the answer.
    LoseAnswer,
}

#[derive(Debug, Clone)]
struct Row {
    position: i64,
    resume: i64,
    watermark: Option<DateTime<Utc>>,
    epoch: i64,
    last_flush: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Outcome {
    Ended(Ended),
    Waiting,
}

/// A decision's key, as the table's: input, partition, request id, outcome.
type DecisionKey = (Input, i32, String, Outcome);

/// A handle: clones share one store, as the connections of a pool share one database.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore(Arc<Mutex<Inner>>);

#[derive(Debug, Default)]
struct Inner {
    positions: HashMap<(Input, i32), Row>,
    /// By (input, partition, request id, outcome), as the table's key: the record's offset and
    /// the half's event time.
    decisions: HashMap<DecisionKey, (i64, DateTime<Utc>)>,
    rows: HashMap<WindowKey, Aggregate>,
    faults: VecDeque<Fault>,
    commits: u64,
}

impl MemoryStore {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The window rows written so far.
    pub fn rows(&self) -> HashMap<WindowKey, Aggregate> {
        self.inner().rows.clone()
    }

    /// The next store call fails with `fault` (calls after it with the faults injected after).
    pub fn inject(&self, fault: Fault) {
        self.inner().faults.push_back(fault);
    }

    /// How many commits were written.
    pub fn commits(&self) -> u64 {
        self.inner().commits
    }

    /// The stored position and resume offset of an input partition.
    pub fn stored(&self, input: Input, partition: i32) -> Option<(i64, i64)> {
        self.inner()
            .positions
            .get(&(input, partition))
            .filter(|r| r.position >= 0)
            .map(|r| (r.position, r.resume))
    }

    /// How many records are stored as still waiting behind the watermark.
    pub fn waiting(&self) -> usize {
        self.inner()
            .decisions
            .keys()
            .filter(|k| k.3 == Outcome::Waiting)
            .count()
    }
}

fn unavailable() -> StoreError {
    StoreError::Unavailable("injected fault".into())
}

impl Inner {
    fn write(&mut self, flush: &Flush, epochs: &Epochs, id: &str) -> Result<usize, StoreError> {
        let windows = flush.windows();
        let written = flush.positions.iter().any(|p| {
            self.positions
                .get(&(p.input, p.partition))
                .and_then(|r| r.last_flush.as_deref())
                == Some(id)
        });
        if written {
            return Ok(windows.len());
        }
        // Every epoch is checked before anything changes: the transaction writes all or nothing.
        for p in &flush.positions {
            let epoch = epochs.get(&(p.input, p.partition)).copied().unwrap_or(-1);
            if self
                .positions
                .get(&(p.input, p.partition))
                .is_none_or(|r| r.epoch != epoch)
            {
                return Err(StoreError::Fenced {
                    topic: format!("{:?}", p.input),
                    partition: p.partition,
                });
            }
        }
        for p in &flush.positions {
            let row = self
                .positions
                .get_mut(&(p.input, p.partition))
                .expect("checked above");
            row.position = p.consumed;
            row.resume = p.resume;
            // Times are kept to the microsecond, as Postgres keeps them.
            row.watermark = p.watermark.map(|w| w.trunc_subsecs(6));
            row.last_flush = Some(id.to_owned());
            self.decisions
                .retain(|(input, partition, _, outcome), (offset, _)| {
                    (*input, *partition) != (p.input, p.partition)
                        || (*offset >= p.resume && *outcome != Outcome::Waiting)
                });
        }
        for d in &flush.decisions {
            let key = (
                d.source.input,
                d.source.partition,
                d.request_id.clone(),
                Outcome::Ended(d.ended),
            );
            self.decisions
                .entry(key)
                .or_insert((d.source.offset, d.at.trunc_subsecs(6)));
        }
        for w in &flush.waiting {
            let key = (
                w.source.input,
                w.source.partition,
                w.request_id.clone(),
                Outcome::Waiting,
            );
            self.decisions
                .entry(key)
                .or_insert((w.source.offset, DateTime::<Utc>::MIN_UTC));
        }
        for (key, partial) in &windows {
            self.rows.entry(key.clone()).or_default().merge(partial);
        }
        self.commits += 1;
        Ok(windows.len())
    }
}

impl PositionStore for MemoryStore {
    fn claim(&mut self, partitions: &[i32]) -> Result<Claimed, StoreError> {
        self.inner().claim(partitions)
    }

    fn commit(&mut self, flush: &Flush, epochs: &Epochs, id: &str) -> Result<usize, StoreError> {
        let mut inner = self.inner();
        match inner.faults.pop_front() {
            Some(Fault::Refuse) => Err(unavailable()),
            Some(Fault::LoseAnswer) => {
                inner.write(flush, epochs, id)?;
                Err(unavailable())
            }
            None => inner.write(flush, epochs, id),
        }
    }
}

impl Inner {
    fn claim(&mut self, partitions: &[i32]) -> Result<Claimed, StoreError> {
        if self.faults.pop_front().is_some() {
            return Err(unavailable());
        }
        let mut claimed = Claimed::default();
        for &partition in partitions {
            for input in [Input::Requests, Input::Responses] {
                let row = self
                    .positions
                    .entry((input, partition))
                    .and_modify(|r| r.epoch += 1)
                    .or_insert(Row {
                        position: -1,
                        resume: -1,
                        watermark: None,
                        epoch: 1,
                        last_flush: None,
                    });
                claimed.claims.push(Claim {
                    input,
                    partition,
                    stored: (row.position >= 0).then_some((
                        Committed {
                            position: row.position,
                            watermark: row.watermark,
                        },
                        row.resume,
                    )),
                    epoch: row.epoch,
                });
            }
        }
        for ((input, partition, request_id, outcome), (offset, at)) in &self.decisions {
            if !partitions.contains(partition) {
                continue;
            }
            let source = Source {
                input: *input,
                partition: *partition,
                offset: *offset,
            };
            match outcome {
                Outcome::Waiting => claimed.waiting.push(source),
                Outcome::Ended(ended) => claimed.decisions.push(Decision {
                    request_id: request_id.clone(),
                    ended: *ended,
                    source,
                    at: *at,
                }),
            }
        }
        Ok(claimed)
    }
}
