//! Latency histograms: one fixed configuration everywhere, so that histograms from different
//! windows, partitions and processor instances merge exactly.

use std::ops::{Deref, DerefMut};
use std::sync::LazyLock;

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;

/// Lowest value told apart, in milliseconds.
pub const LOWEST_MS: u64 = 1;
/// Highest value tracked: one hour. Larger values are recorded as this.
pub const HIGHEST_MS: u64 = 3_600_000;
/// Two significant digits: values are within 1% (HdrHistogram's bound for 2 digits), at a
/// fraction of the memory of three.
pub const SIGNIFICANT_DIGITS: u8 = 2;

pub type Latencies = Histogram<u64>;

pub fn new() -> Latencies {
    Histogram::new_with_bounds(LOWEST_MS, HIGHEST_MS, SIGNIFICANT_DIGITS)
        .expect("the histogram bounds are valid constants")
}

/// An empty histogram of the same configuration (values land in the same buckets, so
/// percentiles are the same) whose counts start small and grow to the largest value added:
/// for answers that merge many stored histograms into many buckets, where a full-size one
/// per bucket (16 KiB, zeroed) cost more than the merging. It never goes into storage.
pub fn growing() -> Latencies {
    let mut h = Histogram::new_with_bounds(LOWEST_MS, 2 << HALF_MAGNITUDE, SIGNIFICANT_DIGITS)
        .expect("the histogram bounds are valid constants");
    h.auto(true);
    h
}

/// A histogram whose counts are allocated when the first value lands in it: a window's
/// (a window without time-to-first-token values never holds that histogram's 16 KiB) or a
/// roll-up bucket's (a bucket of one stored row reads its percentiles from the row's encoding
/// and never builds one). Empty, it reads as an empty histogram of the standard
/// configuration: its encoding, percentiles and merges are those of [`new`]'s.
#[derive(Debug, Clone)]
pub struct Lazy {
    counts: Option<Latencies>,
    /// Allocated as [`growing`] (for answers) rather than [`new`].
    growing: bool,
}

static EMPTY: LazyLock<Latencies> = LazyLock::new(new);

impl Lazy {
    /// Becomes [`new`] when written to.
    pub fn standard() -> Self {
        Self {
            counts: None,
            growing: false,
        }
    }

    /// Becomes [`growing`] when written to.
    pub fn growing() -> Self {
        Self {
            counts: None,
            growing: true,
        }
    }

    /// Whether its counts were ever allocated.
    pub fn is_allocated(&self) -> bool {
        self.counts.is_some()
    }
}

impl From<Latencies> for Lazy {
    fn from(histogram: Latencies) -> Self {
        Self {
            counts: Some(histogram),
            growing: false,
        }
    }
}

impl Deref for Lazy {
    type Target = Latencies;

    fn deref(&self) -> &Latencies {
        self.counts.as_ref().unwrap_or(&EMPTY)
    }
}

impl DerefMut for Lazy {
    fn deref_mut(&mut self) -> &mut Latencies {
        let grows = self.growing;
        self.counts
            .get_or_insert_with(|| if grows { growing() } else { new() })
    }
}

impl PartialEq for Lazy {
    /// Equal counts. (HdrHistogram's own equality also tells empty histograms of different
    /// sizes apart.)
    fn eq(&self, other: &Self) -> bool {
        match (self.is_empty(), other.is_empty()) {
            (true, true) => true,
            (false, false) => **self == **other,
            _ => false,
        }
    }
}

/// Records one value, clamped into the tracked range.
pub fn record(histogram: &mut Latencies, value_ms: u64) {
    // A growing histogram grows to take it (saturating would clamp it to its current size).
    let value = value_ms.min(HIGHEST_MS);
    if histogram.record(value).is_err() {
        histogram.saturating_record(value);
    }
}

/// HdrHistogram's V2 encoding, without compression (it runs once per window write).
pub fn encode(histogram: &Latencies) -> Vec<u8> {
    let mut out = Vec::new();
    V2Serializer::new()
        .serialize(histogram, &mut out)
        .expect("writing into a Vec cannot fail");
    out
}

pub fn decode(bytes: &[u8]) -> Result<Latencies, HistogramError> {
    let decoded: Latencies = Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| HistogramError(format!("{e:?}")))?;
    // Re-home the counts in the standard configuration, so merges never lose precision.
    let mut standard = new();
    standard
        .add(&decoded)
        .map_err(|e| HistogramError(format!("{e:?}")))?;
    Ok(standard)
}

#[derive(Debug, thiserror::Error)]
#[error("cannot decode a stored histogram: {0}")]
pub struct HistogramError(String);

/// HdrHistogram's V2 encoding cookie (uncompressed).
const V2_COOKIE: u32 = 0x1c84_9313;
const HEADER: usize = 40;
/// log2 of half the sub-buckets of the standard configuration (2 digits: 256 sub-buckets).
const HALF_MAGNITUDE: u32 = 7;

/// Adds the counts of an encoded histogram into `target` without building a histogram for it:
/// the inner loop of roll-ups, which merge thousands of stored windows per answer. Encodings
/// in another configuration take the general path through [`decode`].
pub fn add_encoded(target: &mut Latencies, bytes: &[u8]) -> Result<(), HistogramError> {
    let Some(payload) = standard_payload(bytes)? else {
        return target
            .add(decode(bytes)?)
            .map_err(|e| HistogramError(format!("{e:?}")));
    };
    // A growing target is grown once, to the highest value the encoding holds, rather than
    // once for each higher value recorded (a roll-up's first row in each bucket did that
    // for every value it held).
    let mut highest = None;
    for count in Counts::of(payload) {
        highest = Some(count?.0);
    }
    if let Some(index) = highest {
        grow_to(target, value_at_index(index))?;
    }
    for count in Counts::of(payload) {
        let (index, n) = count?;
        target
            .record_n(value_at_index(index), n)
            .map_err(|e| HistogramError(format!("{e:?}")))?;
    }
    Ok(())
}

/// The values at quantiles `qs` (ascending) of an encoded histogram, read from its non-zero
/// counts without building it: each what `value_at_quantiles` gives for the decoded histogram,
/// zeros for an empty one. A roll-up bucket of a single stored row (every bucket of a query
/// that reads the roll-up rows of its own grouping) is answered so; building its histogram
/// and scanning every one of its counts was a quarter of such an answer's time.
pub fn quantiles_encoded<const N: usize>(
    bytes: &[u8],
    qs: [f64; N],
) -> Result<[u64; N], HistogramError> {
    let Some(payload) = standard_payload(bytes)? else {
        return Ok(quantiles(&decode(bytes)?, qs));
    };
    // Decoded once into the non-zero counts (a stored window has tens of them), then walked.
    let mut nonzero = Vec::with_capacity(64);
    let mut total = 0u64;
    for count in Counts::of(payload) {
        let (index, n) = count?;
        total = total.saturating_add(n);
        nonzero.push((index, n));
    }
    let mut out = [0; N];
    if total == 0 {
        return Ok(out);
    }
    // As HdrHistogram counts: the first index whose running count reaches the quantile's share
    // of the total (at least one), reported as the highest value it holds (the lowest for 0).
    let (mut counts, mut seen, mut at) = (nonzero.into_iter(), 0u64, 0u64);
    for (slot, q) in out.iter_mut().zip(qs) {
        let target = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        while seen < target {
            let Some((index, n)) = counts.next() else {
                break;
            };
            (at, seen) = (index, seen.saturating_add(n));
        }
        let lowest = value_at_index(at);
        *slot = if q == 0.0 {
            lowest
        } else {
            lowest + (1u64 << bucket_of(at)) - 1
        };
    }
    Ok(out)
}

/// The values at quantiles `qs` (ascending) of `histogram`, in one pass; zeros for an empty
/// one.
pub fn quantiles<const N: usize>(histogram: &Latencies, qs: [f64; N]) -> [u64; N] {
    let mut out = [0; N];
    if !histogram.is_empty() {
        for (slot, value) in out.iter_mut().zip(histogram.value_at_quantiles(qs)) {
            *slot = value;
        }
    }
    out
}

/// The counts of an encoding in the standard configuration (uncompressed V2, the bounds and
/// digits above); `None` for any other, which only the general decoder reads.
fn standard_payload(bytes: &[u8]) -> Result<Option<&[u8]>, HistogramError> {
    let field = |at: usize, n: usize| -> Result<&[u8], HistogramError> {
        bytes
            .get(at..at + n)
            .ok_or_else(|| HistogramError("truncated header".into()))
    };
    let u32_at = |at| field(at, 4).map(|b| u32::from_be_bytes(b.try_into().unwrap_or_default()));
    let u64_at = |at| field(at, 8).map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()));
    let standard = u32_at(0)? == V2_COOKIE
        && u32_at(8)? == 0
        && u32_at(12)? == u32::from(SIGNIFICANT_DIGITS)
        && u64_at(16)? == LOWEST_MS
        && u64_at(24)? == HIGHEST_MS;
    if !standard {
        return Ok(None);
    }
    let len = u32_at(4)? as usize;
    bytes
        .get(HEADER..HEADER + len)
        .map(Some)
        .ok_or_else(|| HistogramError("truncated payload".into()))
}

/// Makes a growing `target` able to count `value` without resizing: it is replaced by one of
/// the same configuration sized for it, holding the same counts. A full-size histogram keeps
/// its range.
fn grow_to(target: &mut Latencies, value: u64) -> Result<(), HistogramError> {
    if value <= target.high() || !target.is_auto_resize() {
        return Ok(());
    }
    let mut bigger = Histogram::new_with_bounds(LOWEST_MS, value, SIGNIFICANT_DIGITS)
        .map_err(|e| HistogramError(format!("{e:?}")))?;
    bigger.auto(true);
    bigger
        .add(&*target)
        .map_err(|e| HistogramError(format!("{e:?}")))?;
    *target = bigger;
    Ok(())
}

/// The non-zero counts of a V2 payload, as (index, count), lowest index first: LEB128
/// values (at most 9 bytes, the ninth taken whole), zig-zag encoded, a negative one a run
/// of empty indexes.
struct Counts<'a> {
    payload: &'a [u8],
    at: usize,
    index: u64,
}

impl<'a> Counts<'a> {
    fn of(payload: &'a [u8]) -> Self {
        Self {
            payload,
            at: 0,
            index: 0,
        }
    }
}

impl Iterator for Counts<'_> {
    type Item = Result<(u64, u64), HistogramError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.at < self.payload.len() {
            let mut raw = 0u64;
            for i in 0..9 {
                let Some(&b) = self.payload.get(self.at) else {
                    self.at = self.payload.len();
                    return Some(Err(HistogramError("truncated count".into())));
                };
                self.at += 1;
                if i == 8 {
                    raw |= u64::from(b) << 56;
                    break;
                }
                raw |= u64::from(b & 0x7f) << (7 * i);
                if b & 0x80 == 0 {
                    break;
                }
            }
            let n = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
            if n < 0 {
                self.index += n.unsigned_abs();
            } else {
                let index = self.index;
                self.index += 1;
                if n > 0 {
                    return Some(Ok((index, n as u64)));
                }
            }
        }
        None
    }
}

/// The lowest value counted at `index` in the standard configuration.
fn value_at_index(index: u64) -> u64 {
    let half = 1u64 << HALF_MAGNITUDE;
    let bucket = (index >> HALF_MAGNITUDE) as i64 - 1;
    let sub = (index & (half - 1)) + half;
    if bucket < 0 {
        sub - half
    } else {
        sub << bucket
    }
}

/// The bucket of `index` in the standard configuration: the values it holds are
/// `value_at_index(index)` and the `2^bucket - 1` above it.
fn bucket_of(index: u64) -> u32 {
    ((index >> HALF_MAGNITUDE) as u32).saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// An unwritten lazy histogram is an empty standard one to every reader (its encoding
    /// too) and allocates nothing; written, it holds what the eager one holds.
    #[test]
    fn a_lazy_histogram_reads_as_the_eager_one() {
        for mut lazy in [Lazy::standard(), Lazy::growing()] {
            assert!(!lazy.is_allocated());
            assert_eq!(encode(&lazy), encode(&new()));
            assert_eq!(quantiles(&lazy, [0.5, 1.0]), [0, 0]);
            assert_eq!(lazy, Lazy::from(new()));
            assert!(!lazy.is_allocated());
            let mut eager = new();
            for v in [3, 700, 700, 42_000] {
                record(&mut lazy, v);
                record(&mut eager, v);
            }
            assert!(lazy.is_allocated());
            assert_eq!(
                quantiles(&lazy, [0.5, 0.99, 1.0]),
                quantiles(&eager, [0.5, 0.99, 1.0])
            );
            assert_eq!(lazy, Lazy::from(eager));
            assert_ne!(lazy, Lazy::standard());
        }
    }

    #[test]
    fn values_outside_the_range_are_clamped_not_lost() {
        let mut h = new();
        record(&mut h, 0);
        record(&mut h, 10 * HIGHEST_MS);
        assert_eq!(h.len(), 2);
        assert!(h.max() >= HIGHEST_MS);
    }

    #[test]
    fn percentiles_stay_within_one_percent() {
        let mut h = new();
        for v in 1..=10_000u64 {
            record(&mut h, v);
        }
        for (q, exact) in [(0.5, 5_000.0), (0.95, 9_500.0), (0.99, 9_900.0)] {
            let got = h.value_at_quantile(q) as f64;
            assert!(
                (got - exact).abs() / exact <= 0.01,
                "q{q}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn an_encoding_in_another_configuration_is_still_added() {
        let mut other: Latencies = Histogram::new_with_bounds(1, 60_000, 3).unwrap();
        other.record_n(1234, 5).unwrap();
        let mut target = new();
        add_encoded(&mut target, &encode(&other)).unwrap();
        assert_eq!(target.len(), 5);
        assert!(target.equivalent(target.max(), 1234));
        assert!(add_encoded(&mut target, b"not a histogram").is_err());
    }

    proptest! {
        /// Merging partial histograms equals one histogram of all the values, and survives
        /// the round trip through storage.
        #[test]
        fn merged_partials_equal_one_histogram_of_everything(
            parts in prop::collection::vec(prop::collection::vec(0u64..5_000_000, 0..200), 1..6)
        ) {
            let mut whole = new();
            let mut merged = new();
            let mut streamed = new();
            let mut grown = growing();
            let mut grown_merged = growing();
            for part in &parts {
                let mut partial = new();
                for &v in part {
                    record(&mut partial, v);
                    record(&mut whole, v);
                }
                let stored = decode(&encode(&partial)).unwrap();
                merged.add(&stored).unwrap();
                add_encoded(&mut streamed, &encode(&partial)).unwrap();
                add_encoded(&mut grown, &encode(&partial)).unwrap();
                grown_merged.add(&partial).unwrap();
            }
            // A growing histogram gives the same figures as a full-size one.
            for h in [&grown, &grown_merged] {
                prop_assert_eq!(h.len(), whole.len());
                prop_assert_eq!(h.max(), whole.max());
                for q in [0.0, 0.5, 0.95, 0.99, 1.0] {
                    prop_assert_eq!(h.value_at_quantile(q), whole.value_at_quantile(q));
                }
                for limit in [1, 100, 999, 1000, 123_456] {
                    prop_assert_eq!(
                        crate::slo::count_under(h, limit),
                        crate::slo::count_under(&whole, limit)
                    );
                }
            }
            prop_assert_eq!(encode(&streamed), encode(&whole));
            prop_assert_eq!(merged.len(), whole.len());
            for q in [0.5, 0.95, 0.99, 1.0] {
                prop_assert_eq!(merged.value_at_quantile(q), whole.value_at_quantile(q));
            }
            prop_assert_eq!(encode(&merged), encode(&whole));
        }

        /// Quantiles read from an encoding equal those of the histogram it encodes, in the
        /// standard configuration and in another.
        #[test]
        fn quantiles_read_from_an_encoding_equal_the_histograms(
            values in prop::collection::vec(0u64..5_000_000, 0..300),
            qs in prop::collection::vec(0.0f64..=1.0, 0..6),
            edges in prop::sample::subsequence(vec![0.0, 0.5, 1.0], 0..=3),
        ) {
            let mut qs: Vec<f64> = qs.into_iter().chain(edges).collect();
            qs.sort_by(f64::total_cmp);
            let mut h = new();
            let mut other: Latencies = Histogram::new_with_bounds(1, HIGHEST_MS, 3).unwrap();
            for &v in &values {
                record(&mut h, v);
                other.saturating_record(v.clamp(1, HIGHEST_MS));
            }
            for (histogram, standard) in [(&h, true), (&other, false)] {
                // Each quantile on its own, as the running count of one pass must not drift.
                let expected: Vec<u64> = qs
                    .iter()
                    .map(|&q| if histogram.is_empty() { 0 } else { decode(&encode(histogram)).unwrap().value_at_quantile(q) })
                    .collect();
                let mut got = Vec::new();
                for &q in &qs {
                    got.push(quantiles_encoded(&encode(histogram), [q]).unwrap()[0]);
                }
                prop_assert_eq!(&got, &expected, "one at a time, standard: {}", standard);
                if qs.len() >= 3 {
                    let three = quantiles_encoded(&encode(histogram), [qs[0], qs[1], qs[2]]).unwrap();
                    prop_assert_eq!(three.to_vec(), expected[..3].to_vec(), "in one pass, standard: {}", standard);
                }
            }
        }
    }

    #[test]
    fn quantiles_of_a_broken_encoding_are_an_error() {
        let mut h = new();
        record(&mut h, 250);
        let mut bytes = encode(&h);
        assert_eq!(
            quantiles_encoded(&bytes, [0.5]).unwrap(),
            [h.value_at_quantile(0.5)]
        );
        bytes.truncate(bytes.len() - 1);
        assert!(quantiles_encoded(&bytes, [0.5]).is_err());
        assert!(quantiles_encoded(b"not a histogram", [0.5]).is_err());
    }
}
