//! Which input offsets the processor still needs.
//!
//! A record is needed while anything derived from it is not yet written: a half waiting for
//! its partner, a pair in a window that is still open, or a finished pair remembered to
//! recognise duplicates. After a restart the processor resumes each input partition at the
//! smallest needed offset and replays from there.

use std::collections::{BTreeMap, HashMap};

/// The two input topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Input {
    Requests,
    Responses,
}

/// Where a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    pub input: Input,
    pub partition: i32,
    pub offset: i64,
}

impl Source {
    pub fn topic_partition(&self) -> (Input, i32) {
        (self.input, self.partition)
    }
}

/// A multiset of held offsets per input partition.
#[derive(Debug, Default, Clone)]
pub struct Needed {
    held: HashMap<(Input, i32), BTreeMap<i64, u32>>,
}

impl Needed {
    pub fn hold(&mut self, source: Source) {
        *self
            .held
            .entry(source.topic_partition())
            .or_default()
            .entry(source.offset)
            .or_default() += 1;
    }

    pub fn release(&mut self, source: Source) {
        let Some(offsets) = self.held.get_mut(&source.topic_partition()) else {
            return;
        };
        if let Some(count) = offsets.get_mut(&source.offset) {
            *count -= 1;
            if *count == 0 {
                offsets.remove(&source.offset);
            }
        }
    }

    /// The smallest offset still held in this input partition.
    pub fn min(&self, input: Input, partition: i32) -> Option<i64> {
        self.held.get(&(input, partition))?.keys().next().copied()
    }

    /// Forgets everything held in one input partition (it was revoked).
    pub fn drop_partition(&mut self, input: Input, partition: i32) {
        self.held.remove(&(input, partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: i64) -> Source {
        Source {
            input: Input::Requests,
            partition: 0,
            offset,
        }
    }

    #[test]
    fn the_minimum_follows_holds_and_releases_with_multiplicity() {
        let mut needed = Needed::default();
        needed.hold(at(7));
        needed.hold(at(3));
        needed.hold(at(3));
        assert_eq!(needed.min(Input::Requests, 0), Some(3));
        needed.release(at(3));
        assert_eq!(needed.min(Input::Requests, 0), Some(3));
        needed.release(at(3));
        assert_eq!(needed.min(Input::Requests, 0), Some(7));
        assert_eq!(needed.min(Input::Responses, 0), None);
        needed.release(at(7));
        assert_eq!(needed.min(Input::Requests, 0), None);
    }
}
