//! One-minute tumbling windows per (tenant, route, model), keyed by the request's event time.
//!
//! A window closes once the watermark passes its end plus the grace; its aggregate is then
//! handed out to be merged into the stored row. A contribution to a window that already
//! closed opens a fresh partial for it, handed out at the next close and merged the same way:
//! late events add to the stored row, never replace it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
pub use metrics_core::aggregate::Aggregate;

use super::join::Names;
use super::offsets::{Input, Needed, Source};

pub const WINDOW: TimeDelta = TimeDelta::minutes(1);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowKey {
    pub tenant: Arc<str>,
    pub route: Arc<str>,
    pub model: Arc<str>,
    pub start: DateTime<Utc>,
}

impl WindowKey {
    pub fn end(&self) -> DateTime<Utc> {
        self.start + WINDOW
    }

    /// The `llm.metrics` record key.
    pub fn metrics_key(&self) -> String {
        format!("{}|{}|{}", self.tenant, self.route, self.model)
    }
}

#[derive(Debug, Clone, Default)]
struct Open {
    aggregate: Aggregate,
    /// Smallest input offset that contributed, per input partition: held until written.
    oldest: BTreeMap<(Input, i32), i64>,
}

#[derive(Debug, Clone)]
pub struct Windows {
    grace: TimeDelta,
    open: HashMap<WindowKey, Open>,
    /// The watermark of the last close: windows ending (plus grace) at or before it are out.
    closed_through: Option<DateTime<Utc>>,
    needed: Needed,
}

impl Windows {
    pub fn new(grace: TimeDelta) -> Self {
        Self {
            grace,
            open: HashMap::new(),
            closed_through: None,
            needed: Needed::default(),
        }
    }

    pub fn needed(&self) -> &Needed {
        &self.needed
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Whether the window starting at `start` closes once the watermark reaches `watermark`.
    pub fn closes_by(&self, start: DateTime<Utc>, watermark: DateTime<Utc>) -> bool {
        start + WINDOW + self.grace <= watermark
    }

    /// The window of a request: its names and the minute of its timestamp.
    pub fn key_of(&self, names: &Names, timestamp: DateTime<Utc>) -> WindowKey {
        let start = timestamp.duration_trunc(WINDOW).unwrap_or(timestamp);
        WindowKey {
            tenant: Arc::clone(&names.tenant),
            route: Arc::clone(&names.route),
            model: Arc::clone(&names.model),
            start,
        }
    }

    /// Adds to a window; `true` when that window had already closed (a late contribution).
    pub fn add(
        &mut self,
        key: WindowKey,
        sources: &[Source],
        apply: impl FnOnce(&mut Aggregate),
    ) -> bool {
        let late = self
            .closed_through
            .is_some_and(|w| self.closes_by(key.start, w));
        let open = self.open.entry(key).or_default();
        apply(&mut open.aggregate);
        for source in sources {
            let slot = open.oldest.entry(source.topic_partition());
            match slot {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(source.offset);
                    self.needed.hold(*source);
                }
                std::collections::btree_map::Entry::Occupied(mut o) if source.offset < *o.get() => {
                    let (input, partition) = source.topic_partition();
                    self.needed.release(Source {
                        input,
                        partition,
                        offset: *o.get(),
                    });
                    o.insert(source.offset);
                    self.needed.hold(*source);
                }
                std::collections::btree_map::Entry::Occupied(_) => {}
            }
        }
        late
    }

    /// Hands out every window the watermark has closed, with what it holds released.
    pub fn close(&mut self, watermark: DateTime<Utc>) -> Vec<(WindowKey, Aggregate)> {
        let grace = self.grace;
        let closing: Vec<WindowKey> = self
            .open
            .keys()
            .filter(|k| k.start + WINDOW + grace <= watermark)
            .cloned()
            .collect();
        let mut out = Vec::with_capacity(closing.len());
        for key in closing {
            if let Some(open) = self.open.remove(&key) {
                for ((input, partition), offset) in open.oldest {
                    self.needed.release(Source {
                        input,
                        partition,
                        offset,
                    });
                }
                out.push((key, open.aggregate));
            }
        }
        self.closed_through = Some(self.closed_through.map_or(watermark, |w| w.max(watermark)));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests;
