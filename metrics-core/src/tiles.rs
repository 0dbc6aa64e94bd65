//! Which stored rows answer a time range: whole days, hours and five minutes from the
//! roll-ups, minute windows only at the ragged edges.
//!
//! A minute window belongs to a range when its start does (`from <= start < to`). A roll-up
//! bucket may stand in for its minutes only when every one of them belongs: its start is at
//! or after `from` and its end at or before `to`. [`plan`] splits a range into such pieces,
//! coarsest first from the middle out, so each minute of the range is counted exactly once.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

/// The widths rows are stored at (UTC, aligned to the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Minute,
    FiveMinutes,
    Hour,
    Day,
}

impl Level {
    /// The roll-up levels, finest first.
    pub const ROLLUPS: [Level; 3] = [Level::FiveMinutes, Level::Hour, Level::Day];

    pub fn width(self) -> TimeDelta {
        match self {
            Level::Minute => TimeDelta::minutes(1),
            Level::FiveMinutes => TimeDelta::minutes(5),
            Level::Hour => TimeDelta::hours(1),
            Level::Day => TimeDelta::days(1),
        }
    }

    pub fn seconds(self) -> i32 {
        match self {
            Level::Minute => 60,
            Level::FiveMinutes => 300,
            Level::Hour => 3_600,
            Level::Day => 86_400,
        }
    }

    fn finer(self) -> Level {
        match self {
            Level::Day => Level::Hour,
            Level::Hour => Level::FiveMinutes,
            Level::FiveMinutes | Level::Minute => Level::Minute,
        }
    }

    /// The start of the bucket of this width `t` falls in.
    pub fn bucket(self, t: DateTime<Utc>) -> DateTime<Utc> {
        t.duration_trunc(self.width()).unwrap_or(t)
    }

    /// The first bucket start at or after `t`.
    fn ceil(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let start = self.bucket(t);
        if start < t {
            start + self.width()
        } else {
            start
        }
    }
}

/// Rows of one level whose start lies in `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub level: Level,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// The pieces that together hold every minute window of `[from, to)` exactly once, using
/// rows no coarser than `coarsest`. Empty for an empty range.
pub fn plan(from: DateTime<Utc>, to: DateTime<Utc>, coarsest: Level) -> Vec<Tile> {
    let mut tiles = Vec::new();
    add(&mut tiles, from, to, coarsest);
    tiles
}

fn add(tiles: &mut Vec<Tile>, from: DateTime<Utc>, to: DateTime<Utc>, level: Level) {
    if from >= to {
        return;
    }
    if level == Level::Minute {
        tiles.push(Tile { level, from, to });
        return;
    }
    let (first, end) = (level.ceil(from), level.bucket(to));
    if first >= end {
        return add(tiles, from, to, level.finer());
    }
    add(tiles, from, first, level.finer());
    tiles.push(Tile {
        level,
        from: first,
        to: end,
    });
    add(tiles, end, to, level.finer());
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 8, h, m, s).unwrap()
    }

    fn tile(level: Level, from: DateTime<Utc>, to: DateTime<Utc>) -> Tile {
        Tile { level, from, to }
    }

    #[test]
    fn a_range_off_the_hour_reads_hours_between_and_finer_rows_toward_its_edges() {
        let tiles = plan(at(9, 32, 0), at(12, 17, 0), Level::Day);
        assert_eq!(
            tiles,
            vec![
                tile(Level::Minute, at(9, 32, 0), at(9, 35, 0)),
                tile(Level::FiveMinutes, at(9, 35, 0), at(10, 0, 0)),
                tile(Level::Hour, at(10, 0, 0), at(12, 0, 0)),
                tile(Level::FiveMinutes, at(12, 0, 0), at(12, 15, 0)),
                tile(Level::Minute, at(12, 15, 0), at(12, 17, 0)),
            ]
        );
    }

    #[test]
    fn a_start_inside_a_minute_leaves_that_minute_out_and_every_bucket_holding_it() {
        // The 10:00 window starts before `from`, so it is not in the range, and neither can
        // the 10:00 five minutes or the 10:00 hour be.
        let tiles = plan(at(10, 0, 30), at(12, 0, 0), Level::Hour);
        assert_eq!(
            tiles,
            vec![
                tile(Level::Minute, at(10, 0, 30), at(10, 5, 0)),
                tile(Level::FiveMinutes, at(10, 5, 0), at(11, 0, 0)),
                tile(Level::Hour, at(11, 0, 0), at(12, 0, 0)),
            ]
        );
    }

    #[test]
    fn days_in_the_middle_hours_and_minutes_around_them() {
        let from = Utc.with_ymd_and_hms(2026, 3, 1, 22, 10, 0).unwrap();
        let to = Utc.with_ymd_and_hms(2026, 3, 4, 1, 0, 0).unwrap();
        let levels: Vec<_> = plan(from, to, Level::Day).iter().map(|t| t.level).collect();
        assert_eq!(
            levels,
            [Level::FiveMinutes, Level::Hour, Level::Day, Level::Hour]
        );
        assert_eq!(
            plan(from, to, Level::Day)[2].from,
            Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap()
        );
        assert_eq!(
            plan(from, to, Level::Day)[2].to,
            Utc.with_ymd_and_hms(2026, 3, 4, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn empty_and_reversed_ranges_read_nothing() {
        assert!(plan(at(10, 0, 0), at(10, 0, 0), Level::Day).is_empty());
        assert!(plan(at(11, 0, 0), at(10, 0, 0), Level::Day).is_empty());
    }

    #[test]
    fn minute_granularity_never_reads_roll_ups() {
        let tiles = plan(at(0, 0, 0), at(23, 0, 0), Level::Minute);
        assert_eq!(
            tiles,
            vec![Tile {
                level: Level::Minute,
                from: at(0, 0, 0),
                to: at(23, 0, 0)
            }]
        );
    }

    proptest! {
        /// Every minute window whose start is in the range is read exactly once (through its
        /// own row or exactly one bucket holding it), and no bucket holds a minute outside it.
        #[test]
        fn tiles_cover_each_minute_of_the_range_once(
            from_s in 0i64..4 * 86_400,
            len_s in 0i64..3 * 86_400,
            coarsest in prop_oneof![
                Just(Level::Minute),
                Just(Level::FiveMinutes),
                Just(Level::Hour),
                Just(Level::Day)
            ],
        ) {
            let base = Utc.with_ymd_and_hms(2026, 2, 27, 0, 0, 0).unwrap();
            let from = base + TimeDelta::seconds(from_s);
            let to = from + TimeDelta::seconds(len_s);
            let tiles = plan(from, to, coarsest);
            for t in &tiles {
                prop_assert!(t.level <= coarsest);
                prop_assert!(t.from < t.to);
                if t.level != Level::Minute {
                    prop_assert_eq!(t.level.bucket(t.from), t.from);
                    prop_assert_eq!(t.level.bucket(t.to), t.to);
                }
            }
            let mut minute = Level::Minute.bucket(from) - TimeDelta::hours(26);
            while minute < to + TimeDelta::hours(26) {
                let holders = tiles.iter().filter(|t| {
                    let start = t.level.bucket(minute);
                    t.from <= start && start < t.to
                }).count();
                let wanted = usize::from(from <= minute && minute < to);
                prop_assert_eq!(holders, wanted, "minute {} of [{}, {})", minute, from, to);
                minute += TimeDelta::minutes(1);
            }
        }
    }
}
