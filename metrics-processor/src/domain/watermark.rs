//! Event-time progress.
//!
//! Each input partition (a topic and partition: the two topics are read at their own pace)
//! advances to the largest event time it has delivered; the watermark is the minimum across
//! them, so a window closes only once every partition has moved past
//! it. A partition that has been read to its end and delivered nothing for `idle_after`
//! (processing time) stops holding the watermark back; when every partition is idle the
//! watermark follows the clock, less `idle_after`, so the last windows still close when
//! traffic stops. A partition with a backlog is never idle, however slow its fetches: its
//! halves must not be timed out by the clock while their partners are still unread. Event times are capped at
//! the clock, so one client with a fast clock cannot close everyone's windows early. The
//! watermark never goes back.

use std::collections::HashMap;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};

use super::offsets::Input;

/// One input partition.
type Key = (Input, i32);

#[derive(Debug, Clone, Copy)]
struct Clock {
    max_event: Option<DateTime<Utc>>,
    last_seen: DateTime<Utc>,
    /// Read to the end since its last record.
    at_end: bool,
}

#[derive(Debug, Clone)]
pub struct Watermarks {
    idle_after: TimeDelta,
    partitions: HashMap<Key, Clock>,
    current: Option<DateTime<Utc>>,
}

impl Watermarks {
    pub fn new(idle_after: TimeDelta) -> Self {
        Self {
            idle_after,
            partitions: HashMap::new(),
            current: None,
        }
    }

    /// Partition `partition` of both inputs joins; each holds the watermark back until it
    /// delivers or is read to its end.
    pub fn assign(&mut self, partition: i32, now: DateTime<Utc>) {
        for input in [Input::Requests, Input::Responses] {
            self.partitions.entry((input, partition)).or_insert(Clock {
                max_event: None,
                last_seen: now,
                at_end: false,
            });
        }
    }

    /// The consumer read an input partition to its end.
    pub fn reached_end(&mut self, key: Key) {
        if let Some(clock) = self.partitions.get_mut(&key) {
            clock.at_end = true;
        }
    }

    /// Reading was suspended (paused while Postgres refused commits, or the process was not
    /// scheduled): statistics taken meanwhile said "at the end" of partitions that have since
    /// filled up, and the silence was ours, not the producers'. Every partition counts as
    /// active again until it is seen at its end and silent anew.
    pub fn resumed(&mut self, now: DateTime<Utc>) {
        for clock in self.partitions.values_mut() {
            clock.at_end = false;
            clock.last_seen = clock.last_seen.max(now);
        }
    }

    /// Never goes below `floor` from now on: what a previous owner already closed stays closed.
    pub fn raise_to(&mut self, floor: DateTime<Utc>) {
        self.current = Some(self.current.map_or(floor, |w| w.max(floor)));
    }

    pub fn revoke(&mut self, partition: i32) {
        self.partitions.retain(|(_, p), _| *p != partition);
    }

    pub fn observe(&mut self, key: Key, event_time: DateTime<Utc>, now: DateTime<Utc>) {
        let at = event_time.min(now);
        let clock = self.partitions.entry(key).or_insert(Clock {
            max_event: None,
            last_seen: now,
            at_end: false,
        });
        clock.max_event = Some(clock.max_event.map_or(at, |m| m.max(at)));
        clock.last_seen = now;
        // The two topics of a pair are produced together: news on one means the other may
        // have news its consumer has not fetched yet, whatever the last statistics said.
        for clock in self.partitions.values_mut() {
            clock.at_end = false;
        }
    }

    /// The watermark at processing time `now`, or `None` before any progress. It never goes
    /// back: windows it closed stay closed. It is kept to the microsecond, as Postgres stores
    /// it, so that what a restart reads back is exactly what the running instance used.
    pub fn current(&mut self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.partitions.is_empty() {
            return self.current; // nothing assigned: no progress to speak of
        }
        if let Some(c) = self.progress(now).map(|c| c.trunc_subsecs(6)) {
            self.current = Some(self.current.map_or(c, |w| w.max(c)));
        }
        self.current
    }

    /// How far every input partition has been read, by the records alone: the smallest of
    /// their largest event times, idle or not; `None` until each has delivered one. A half
    /// stamped more than a TTL before this is too late to be joined; unlike
    /// [`Watermarks::progress`] it never follows the clock, so an old backlog read after an
    /// idle spell is not taken for late.
    pub fn read_to(&self) -> Option<DateTime<Utc>> {
        let mut slowest: Option<DateTime<Utc>> = None;
        for clock in self.partitions.values() {
            let at = clock.max_event?;
            slowest = Some(slowest.map_or(at, |s| s.min(at)));
        }
        slowest
    }

    /// How far the records being read have got, now: the slowest active partition, or the
    /// clock when all are idle. Unlike [`Watermarks::current`] it falls back when old records
    /// arrive after an idle spell, which is what giving up on a half must wait for: after the
    /// clock led, a backlog of old pairs is read one topic ahead of the other, and a request
    /// must not time out before the responses partition has been read past it.
    pub fn progress(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.partitions.is_empty() {
            return None;
        }
        // Silence counts for the partitions together, for the same reason as in `observe`.
        let latest = self
            .partitions
            .values()
            .map(|c| c.last_seen)
            .max()
            .unwrap_or(now);
        // Asked at every record: no allocation.
        let mut slowest: Option<DateTime<Utc>> = None;
        let mut any_active = false;
        for clock in self.partitions.values() {
            if clock.at_end && now - latest >= self.idle_after {
                continue;
            }
            any_active = true;
            // An active partition that has delivered nothing yet holds everything back.
            let at = clock.max_event?;
            slowest = Some(slowest.map_or(at, |s| s.min(at)));
        }
        if any_active {
            slowest
        } else {
            Some(now - self.idle_after)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Input = Input::Requests;
    const S: Input = Input::Responses;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn the_slowest_active_partition_sets_the_watermark() {
        let mut w = Watermarks::new(TimeDelta::seconds(10));
        w.assign(0, t(95));
        w.observe((R, 0), t(50), t(100));
        assert_eq!(
            w.current(t(100)),
            None,
            "the responses have delivered nothing yet"
        );
        w.observe((S, 0), t(40), t(100));
        assert_eq!(w.current(t(100)), Some(t(40)));
        w.observe((S, 0), t(60), t(101));
        assert_eq!(w.current(t(101)), Some(t(50)));
    }

    #[test]
    fn requests_read_far_ahead_do_not_move_the_watermark_past_unread_responses() {
        let mut w = Watermarks::new(TimeDelta::seconds(10));
        w.assign(0, t(0));
        w.observe((R, 0), t(300), t(400));
        w.reached_end((R, 0));
        w.observe((S, 0), t(20), t(400));
        assert_eq!(w.current(t(400)), Some(t(20)));
    }

    #[test]
    fn a_pair_read_to_its_end_and_silent_stops_holding_the_watermark_back() {
        let mut w = Watermarks::new(TimeDelta::seconds(10));
        w.observe((R, 0), t(50), t(100));
        w.observe((S, 0), t(20), t(100));
        assert_eq!(w.current(t(100)), Some(t(20)));
        w.reached_end((S, 0));
        assert_eq!(
            w.current(t(111)),
            Some(t(50)),
            "only the requests, not read to their end, count"
        );
        w.reached_end((R, 0));
        assert_eq!(
            w.current(t(111)),
            Some(t(101)),
            "both read, silent: the clock leads"
        );
        w.observe((R, 0), t(60), t(112));
        w.reached_end((R, 0));
        assert_eq!(
            w.current(t(130)),
            Some(t(101)),
            "a request wakes the responses up too"
        );
    }

    #[test]
    fn progress_falls_back_when_old_records_follow_an_idle_spell() {
        let mut w = Watermarks::new(TimeDelta::seconds(10));
        w.assign(0, t(0));
        w.observe((R, 0), t(50), t(100));
        w.observe((S, 0), t(50), t(100));
        w.reached_end((R, 0));
        w.reached_end((S, 0));
        assert_eq!(w.current(t(500)), Some(t(490)), "idle: the clock leads");
        // A backlog of pairs stamped long ago: the requests are read first.
        w.observe((R, 0), t(200), t(501));
        assert_eq!(
            w.current(t(501)),
            Some(t(490)),
            "closed windows stay closed"
        );
        assert_eq!(
            w.progress(t(501)),
            Some(t(50)),
            "the responses have not been read past t(50) yet"
        );
        w.observe((S, 0), t(200), t(502));
        assert_eq!(w.progress(t(502)), Some(t(200)));
    }

    #[test]
    fn a_partition_with_a_backlog_is_never_idle() {
        let mut w = Watermarks::new(TimeDelta::seconds(10));
        w.assign(0, t(0));
        w.assign(1, t(0));
        w.observe((R, 0), t(50), t(100));
        assert_eq!(
            w.current(t(500)),
            None,
            "partition 1 has not even delivered yet"
        );
        w.reached_end((R, 1));
        w.reached_end((S, 1));
        w.reached_end((R, 0));
        w.reached_end((S, 0));
        assert_eq!(
            w.current(t(500)),
            Some(t(490)),
            "both read to the end: the clock leads"
        );
    }

    #[test]
    fn when_everything_is_idle_the_watermark_follows_the_clock_and_never_goes_back() {
        let mut w = Watermarks::new(TimeDelta::seconds(10));
        w.observe((R, 0), t(50), t(60));
        w.reached_end((R, 0));
        w.reached_end((S, 0));
        assert_eq!(w.current(t(80)), Some(t(70)));
        w.observe((R, 0), t(55), t(81));
        w.reached_end((R, 0));
        w.reached_end((S, 0));
        assert_eq!(w.current(t(81)), Some(t(70)), "never backwards");
    }

    #[test]
    fn event_times_ahead_of_the_clock_count_as_now() {
        let mut w = Watermarks::new(TimeDelta::seconds(10));
        w.observe((R, 0), t(500), t(100));
        assert_eq!(w.current(t(100)), Some(t(100)));
    }
}
