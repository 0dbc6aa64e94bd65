//! Latency histograms: one fixed configuration everywhere, so that histograms from different
//! windows, partitions and processor instances merge exactly.

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

/// Records one value, clamped into the tracked range.
pub fn record(histogram: &mut Latencies, value_ms: u64) {
    histogram.saturating_record(value_ms.min(HIGHEST_MS));
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

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

    proptest! {
        /// Merging partial histograms equals one histogram of all the values, and survives
        /// the round trip through storage.
        #[test]
        fn merged_partials_equal_one_histogram_of_everything(
            parts in prop::collection::vec(prop::collection::vec(0u64..5_000_000, 0..200), 1..6)
        ) {
            let mut whole = new();
            let mut merged = new();
            for part in &parts {
                let mut partial = new();
                for &v in part {
                    record(&mut partial, v);
                    record(&mut whole, v);
                }
                let stored = decode(&encode(&partial)).unwrap();
                merged.add(&stored).unwrap();
            }
            prop_assert_eq!(merged.len(), whole.len());
            for q in [0.5, 0.95, 0.99, 1.0] {
                prop_assert_eq!(merged.value_at_quantile(q), whole.value_at_quantile(q));
            }
            prop_assert_eq!(encode(&merged), encode(&whole));
        }
    }
}
