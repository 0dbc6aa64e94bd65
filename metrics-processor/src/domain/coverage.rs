//! Input partitions that nobody is reading.
//!
//! The broker's group coordinator decides who reads what, and a coordinator can get it wrong:
//! a member that died during a rebalance may keep partitions that no live instance is given.
//! Nothing in the consumer's own view shows that, so every instance watches the whole group
//! from the outside, with what it can always see: the positions the group stored in Postgres
//! and the end of every input partition on the broker, and, for the partitions it owns, how
//! far its own consumer has fetched them. A partition is unread when it has records beyond
//! that position and the position (and its owner's epoch) has not moved for `after`. A
//! position that moves, a new owner's claim, or a partition read to its end starts its clock
//! again.
//!
//! Time is a parameter; the shell takes the readings and acts on the answer.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, TimeDelta, Utc};

use super::offsets::Input;

/// One input partition as read from Postgres and the broker at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub input: Input,
    pub partition: i32,
    /// The stored position: the next offset to read. `None` when the group never wrote one.
    pub stored: Option<i64>,
    /// The claim counter of the partition's owner; a new owner raises it.
    pub epoch: i64,
    /// The broker's low and high watermarks: the first offset kept and the next to be written.
    pub start: i64,
    pub end: i64,
    /// For a partition this instance owns: how far its consumer has fetched it. Records
    /// fetched wait in the consumer's one queue behind other partitions' records (a backlog
    /// after a rejoin or an outage), so the stored position can stand still for a while
    /// although the partition is being read.
    pub fetched: Option<i64>,
}

impl Reading {
    /// How far the partition is known to be read: stored, or fetched here.
    fn position(&self) -> Option<i64> {
        // `None` orders below every offset.
        self.stored.max(self.fetched)
    }

    /// Records beyond that position still on the broker.
    fn backlog(&self) -> i64 {
        self.end - self.position().unwrap_or(self.start).max(self.start)
    }
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    position: Option<i64>,
    epoch: i64,
    since: DateTime<Utc>,
}

/// What the last readings said.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Input partitions unread for `after` or longer.
    pub unread: Vec<(Input, i32)>,
    /// Partition pairs among them (partition *i* of either input).
    pub partitions: BTreeSet<i32>,
}

#[derive(Debug, Clone)]
pub struct Coverage {
    after: TimeDelta,
    seen: HashMap<(Input, i32), Seen>,
}

impl Coverage {
    pub fn new(after: TimeDelta) -> Self {
        Self {
            after,
            seen: HashMap::new(),
        }
    }

    /// Takes one round of readings (every input partition) and says which are unread.
    pub fn observe(&mut self, readings: &[Reading], now: DateTime<Utc>) -> Verdict {
        let mut verdict = Verdict::default();
        for r in readings {
            let key = (r.input, r.partition);
            let fresh = Seen {
                position: r.position(),
                epoch: r.epoch,
                since: now,
            };
            let seen = self.seen.entry(key).or_insert(fresh);
            if r.backlog() <= 0 || seen.position != fresh.position || seen.epoch != r.epoch {
                *seen = fresh;
                continue;
            }
            if now - seen.since >= self.after {
                verdict.unread.push(key);
                verdict.partitions.insert(r.partition);
            }
        }
        let present: BTreeSet<(Input, i32)> =
            readings.iter().map(|r| (r.input, r.partition)).collect();
        self.seen.retain(|k, _| present.contains(k));
        verdict.unread.sort();
        verdict
    }

    /// Forgets how long anything has stood still: after a rejoin, which hands out partitions
    /// anew, or while the readings cannot be trusted (Postgres refusing this instance's own
    /// commits stalls every owner alike).
    pub fn restart(&mut self) {
        self.seen.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn reading(partition: i32, stored: Option<i64>, end: i64) -> Reading {
        Reading {
            input: Input::Requests,
            partition,
            stored,
            epoch: 1,
            start: 0,
            end,
            fetched: None,
        }
    }

    #[test]
    fn a_partition_whose_position_stands_still_behind_a_moving_end_is_unread_after_the_limit() {
        let mut c = Coverage::new(TimeDelta::seconds(30));
        assert!(c
            .observe(&[reading(0, Some(10), 20)], t(0))
            .unread
            .is_empty());
        assert!(c
            .observe(&[reading(0, Some(10), 50)], t(29))
            .unread
            .is_empty());
        let v = c.observe(&[reading(0, Some(10), 90)], t(30));
        assert_eq!(v.unread, vec![(Input::Requests, 0)]);
        assert_eq!(v.partitions, BTreeSet::from([0]));
    }

    #[test]
    fn a_moving_position_a_new_claim_or_a_read_to_the_end_restarts_the_clock() {
        let mut c = Coverage::new(TimeDelta::seconds(30));
        c.observe(&[reading(0, Some(10), 20)], t(0));
        // Position moved at 20 s: still read, by whoever owns it.
        assert!(c
            .observe(&[reading(0, Some(15), 40)], t(20))
            .unread
            .is_empty());
        assert!(c
            .observe(&[reading(0, Some(15), 60)], t(45))
            .unread
            .is_empty());
        // A new owner claimed it at 49 s: it replays before it writes, give it time.
        let claimed = Reading {
            epoch: 2,
            ..reading(0, Some(15), 60)
        };
        assert!(c.observe(&[claimed], t(49)).unread.is_empty());
        assert!(c.observe(&[claimed], t(78)).unread.is_empty());
        assert_eq!(c.observe(&[claimed], t(79)).unread.len(), 1);
        // Read to its end: nothing is waiting, however long the position stands still.
        let idle = reading(0, Some(60), 60);
        assert!(c.observe(&[idle], t(80)).unread.is_empty());
        assert!(c.observe(&[idle], t(500)).unread.is_empty());
    }

    #[test]
    fn a_partition_never_written_is_unread_once_it_holds_records_for_the_limit() {
        let mut c = Coverage::new(TimeDelta::seconds(10));
        // Empty, or everything below the stored position already deleted by retention.
        assert!(c.observe(&[reading(3, None, 0)], t(0)).unread.is_empty());
        let trimmed = Reading {
            start: 40,
            ..reading(3, Some(40), 40)
        };
        assert!(c.observe(&[trimmed], t(100)).unread.is_empty());
        c.restart();
        c.observe(&[reading(3, None, 5)], t(200));
        assert_eq!(c.observe(&[reading(3, None, 5)], t(210)).unread.len(), 1);
    }

    #[test]
    fn restart_forgets_every_clock() {
        let mut c = Coverage::new(TimeDelta::seconds(10));
        c.observe(&[reading(1, Some(0), 9)], t(0));
        c.restart();
        assert!(c
            .observe(&[reading(1, Some(0), 9)], t(15))
            .unread
            .is_empty());
        assert_eq!(c.observe(&[reading(1, Some(0), 9)], t(25)).unread.len(), 1);
    }

    #[test]
    fn a_partition_fetched_here_is_read_while_its_records_wait_in_the_queue() {
        // After a rejoin, the consumer's queue holds a backlog of one topic ahead of the
        // other: the stored position of the second stands still until the first is worked
        // through, though everything up to the end has been fetched.
        let mut c = Coverage::new(TimeDelta::seconds(8));
        let queued = Reading {
            fetched: Some(90),
            ..reading(0, Some(10), 90)
        };
        c.observe(&[queued], t(0));
        assert!(c.observe(&[queued], t(20)).unread.is_empty());
        // Fetching as the end moves on is reading too.
        let fetching = Reading {
            fetched: Some(120),
            ..reading(0, Some(10), 130)
        };
        assert!(c.observe(&[fetching], t(21)).unread.is_empty());
        // A fetcher of this instance standing still short of the end is not.
        let stuck = Reading {
            fetched: Some(120),
            ..reading(0, Some(10), 160)
        };
        c.observe(&[stuck], t(22));
        assert_eq!(c.observe(&[stuck], t(30)).unread.len(), 1);
    }
}
