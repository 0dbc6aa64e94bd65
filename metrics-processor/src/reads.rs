//! Which offsets of each input partition the consumer hands over, checked against the offset
//! reading was started from.
//!
//! A Kafka broker answers a fetch with the record batch that holds the offset asked for, and
//! the client drops the records before that offset. Tansu 0.6 answers with the first batch
//! that *starts* at or after it instead, so a fetch from an offset inside a batch never sees
//! the rest of that batch: a restart resuming in the middle of a batch would silently skip
//! the records from its resume offset to the batch's end (the resume offset itself is always
//! a record still needed). The processor therefore expects the records of each input
//! partition without gaps from where it started: a record past the next expected offset means
//! the broker skipped some, and the partition is read again from further back (a gap that a
//! read from further back crosses in one run is a real one: a transaction marker, say), and
//! records before the expected offset are dropped, as a Kafka client drops them. When no
//! later record comes (the partition fell silent after the skipped batch), the consumer's
//! statistics tell: its fetcher stands at the expected offset while the partition's end lies
//! beyond it.

use std::collections::HashMap;

use crate::domain::offsets::Input;

type Key = (Input, i32);

/// What to do with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// The next record: apply it.
    Apply,
    /// Before the expected offset (read again from further back): drop it.
    Drop,
    /// Records were skipped: drop this one and read the partition again from this offset.
    Refetch(i64),
}

#[derive(Debug, Clone, Copy)]
struct Read {
    /// The next offset to apply; `None` while the start policy chooses (anything goes).
    expected: Option<i64>,
    /// A read from further back under way: where it starts, and whether it has delivered a
    /// record before the expected offset (so it runs across that offset without a skip).
    refetch: Option<(i64, bool)>,
    /// Statistics in a row that saw the fetcher stand at the expected offset, short of the end.
    stalls: u8,
    /// The partition's first offset, as the last statistics said: nothing before it is read.
    floor: i64,
}

impl Read {
    /// Where to read again from, `first` back from the expected offset, or twice as far as
    /// the read under way went (at most `most`), not below the first offset; `None` when
    /// there is nothing further back to read.
    fn back(&mut self, expected: i64, first: i64, most: i64) -> Option<i64> {
        let step = match self.refetch {
            Some((from, _)) => (2 * (expected - from)).min(most),
            None => first,
        };
        let from = (expected - step).max(self.floor);
        if from >= expected || self.refetch.is_some_and(|(went, _)| went <= self.floor) {
            return None;
        }
        self.refetch = Some((from, false));
        Some(from)
    }
}

/// How far back the first read again goes when no later record tells how long the batch is.
const FIRST_STEP_BACK: i64 = 16;

/// How far back the statistics alone send a read again, at most: further than any batch a
/// producer sends, and a bound on what a fetcher that is only slow (a broker that is down)
/// costs, since standing still is weaker evidence than a record past the expected offset.
const MOST_STEP_BACK: i64 = 1 << 16;

#[derive(Debug, Default)]
pub struct Reads {
    partitions: HashMap<Key, Read>,
}

impl Reads {
    /// Reading of an input partition starts at `offset` (`None`: where the start policy says).
    pub fn started(&mut self, input: Input, partition: i32, offset: Option<i64>) {
        self.partitions.insert(
            (input, partition),
            Read {
                expected: offset,
                refetch: None,
                stalls: 0,
                floor: 0,
            },
        );
    }

    /// The partition is no longer read here.
    pub fn stopped(&mut self, partition: i32) {
        self.partitions.retain(|(_, p), _| *p != partition);
    }

    /// One record as the consumer handed it over.
    pub fn record(&mut self, input: Input, partition: i32, offset: i64) -> Take {
        let Some(read) = self.partitions.get_mut(&(input, partition)) else {
            return Take::Apply; // not assigned here: the engine ignores it
        };
        read.stalls = 0;
        let Some(expected) = read.expected else {
            read.expected = Some(offset + 1);
            return Take::Apply;
        };
        if offset < expected {
            if let Some((_, crossed)) = read.refetch.as_mut() {
                *crossed = true;
            }
            return Take::Drop;
        }
        // Not the next record, and no read from before the expected offset has run across
        // it (which would put the gap in the log): the broker skipped records. The first
        // guess: the batch holding the expected offset starts as far before it as it ends
        // after it.
        let crossed = matches!(read.refetch, Some((_, true)));
        if offset != expected && !crossed {
            if let Some(from) = read.back(expected, offset - expected, i64::MAX) {
                return Take::Refetch(from);
            }
        }
        read.expected = Some(offset + 1);
        read.refetch = None;
        Take::Apply
    }

    /// From the consumer's statistics (about once a second): its fetcher is at `fetching` and
    /// the partition ends at `end`. Returns where to read again from when the fetcher has
    /// stood at the expected offset, short of the end, in two statistics running: the broker
    /// answered a fetch from inside a batch with nothing, as no later batch exists yet. Not
    /// to be asked while reading is paused: a paused fetcher stands still by design.
    pub fn fetcher(
        &mut self,
        input: Input,
        partition: i32,
        fetching: i64,
        end: i64,
        floor: i64,
    ) -> Option<i64> {
        let read = self.partitions.get_mut(&(input, partition))?;
        read.floor = floor;
        let expected = read.expected?;
        if end <= expected || fetching > expected {
            read.stalls = 0;
            return None;
        }
        read.stalls += 1;
        if read.stalls < 2 {
            return None;
        }
        read.stalls = 0;
        read.back(expected, FIRST_STEP_BACK, MOST_STEP_BACK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const R: Input = Input::Requests;

    /// A log of record batches, served as Tansu 0.6 serves fetches (`skipping`: from the
    /// first batch starting at or after the offset asked for) or as Kafka does (from the
    /// batch holding it), with gaps where transaction markers would be.
    struct Log {
        /// Each batch: its offsets (in order; gaps between and inside allowed).
        batches: Vec<Vec<i64>>,
        skipping: bool,
    }

    impl Log {
        fn fetch(&self, from: i64) -> impl Iterator<Item = i64> + '_ {
            let first = self.batches.iter().position(|b| {
                if self.skipping {
                    b[0] >= from
                } else {
                    *b.last().unwrap() >= from
                }
            });
            self.batches[first.unwrap_or(self.batches.len())..]
                .iter()
                .flatten()
                .copied()
                .filter(move |&o| self.skipping || o >= from)
        }

        fn floor(&self) -> i64 {
            self.batches[0][0]
        }
    }

    /// Reads `log` from `start` through [`Reads`], refetching as it says; the offsets applied.
    fn read(log: &Log, start: i64) -> Vec<i64> {
        let mut reads = Reads::default();
        reads.started(R, 0, Some(start));
        let mut applied = Vec::new();
        let mut from = start;
        for _ in 0..64 {
            let mut refetch = None;
            for offset in log.fetch(from) {
                match reads.record(R, 0, offset) {
                    Take::Apply => applied.push(offset),
                    Take::Drop => {}
                    Take::Refetch(at) => {
                        refetch = Some(at);
                        break;
                    }
                }
            }
            // The fetch ran out. The statistics, twice: the fetcher stands where the last
            // fetch left it, or where it was sent when it got nothing.
            let end = log.batches.iter().flatten().max().unwrap() + 1;
            let fetching = applied.last().map_or(from, |&o| (o + 1).max(from));
            let refetch = refetch
                .or_else(|| (0..2).find_map(|_| reads.fetcher(R, 0, fetching, end, log.floor())));
            match refetch {
                Some(at) => from = at,
                None => return applied,
            }
        }
        panic!("no end of refetching");
    }

    fn log(sizes: &[usize], gaps: &[bool], skipping: bool) -> Log {
        let mut next = 0;
        let mut batches = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let mut batch = Vec::new();
            for _ in 0..size {
                batch.push(next);
                next += 1;
            }
            // A transaction marker after this batch: an offset no record holds.
            if gaps.get(i).copied().unwrap_or(false) {
                next += 1;
            }
            batches.push(batch);
        }
        Log { batches, skipping }
    }

    #[test]
    fn a_resume_inside_a_batch_that_the_broker_skips_reads_the_batch_again() {
        // As seen on Tansu 0.6: batches 0-7, 8-13, 14-…; a resume at 1 got offset 8 first.
        let log = log(&[8, 6, 10], &[], true);
        assert_eq!(log.fetch(1).next(), Some(8), "the broker skips 1-7");
        assert_eq!(read(&log, 1), (1..24).collect::<Vec<_>>());
    }

    #[test]
    fn a_skipped_last_batch_is_found_by_the_fetcher_standing_still() {
        let log = log(&[8], &[], true);
        assert_eq!(log.fetch(1).next(), None, "nothing after the batch");
        assert_eq!(read(&log, 1), (1..8).collect::<Vec<_>>());
    }

    #[test]
    fn a_fetcher_that_only_stands_still_is_sent_back_a_bounded_way() {
        let mut reads = Reads::default();
        reads.started(R, 0, Some(1_000_000));
        let mut froms = Vec::new();
        for _ in 0..40 {
            froms.extend(reads.fetcher(R, 0, 1_000_000, 1_000_100, 0));
        }
        assert_eq!(froms.len(), 20, "every second statistics");
        assert_eq!(froms[0], 1_000_000 - FIRST_STEP_BACK);
        assert!(froms.windows(2).all(|w| w[1] <= w[0]));
        assert_eq!(*froms.last().unwrap(), 1_000_000 - MOST_STEP_BACK);
    }

    #[test]
    fn a_transaction_marker_is_a_gap_that_is_read_across() {
        let log = log(&[4, 4], &[true], false);
        assert_eq!(read(&log, 2), vec![2, 3, 5, 6, 7, 8]);
        assert_eq!(read(&log, 4), vec![5, 6, 7, 8], "the marker at 4 itself");
    }

    proptest! {
        /// From any start, on either broker, every record from the start on is applied once,
        /// in order, and nothing before it.
        #[test]
        fn every_record_from_the_start_is_applied_once(
            sizes in prop::collection::vec(1usize..40, 1..12),
            gaps in prop::collection::vec(any::<bool>(), 0..12),
            skipping in any::<bool>(),
            pick in any::<prop::sample::Index>(),
        ) {
            let log = log(&sizes, &gaps, skipping);
            let all: Vec<i64> = log.batches.iter().flatten().copied().collect();
            let start = all[pick.index(all.len())];
            let want: Vec<i64> = all.iter().copied().filter(|&o| o >= start).collect();
            prop_assert_eq!(read(&log, start), want);
        }
    }
}
