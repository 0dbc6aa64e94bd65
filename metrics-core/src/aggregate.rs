//! The aggregate behind a window row: sums and counts behind every average and the histograms
//! behind every percentile. Everything adds up under [`Aggregate::merge`], so partials from
//! restarts, partitions, processor instances and roll-ups over many windows combine exactly.

use crate::events::ResponseEvent;
use crate::histogram::{self, Latencies};

/// The cost of one call, and whether the model had a price of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub nanos: u64,
    pub priced: bool,
}

/// Everything a window row is computed from. All fields add up under [`Aggregate::merge`], so
/// partials from restarts, partitions and instances combine exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// Requests in the window: paired and timed out.
    pub requests: u64,
    /// Paired requests whose response carries an error.
    pub errors: u64,
    /// Requests whose response never came within the TTL.
    pub timeouts: u64,
    /// Paired requests; the count behind every latency and token average.
    pub completed: u64,
    pub latency_sum_ms: u64,
    pub ttft_sum_ms: u64,
    pub ttft_count: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub cost_nanos: u64,
    /// Paired requests whose model has no price of its own.
    pub unpriced: u64,
    pub latency: Latencies,
    pub ttft: Latencies,
}

impl Default for Aggregate {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            timeouts: 0,
            completed: 0,
            latency_sum_ms: 0,
            ttft_sum_ms: 0,
            ttft_count: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            cached_prompt_tokens: 0,
            cost_nanos: 0,
            unpriced: 0,
            latency: histogram::new(),
            ttft: histogram::new(),
        }
    }
}

impl Aggregate {
    pub fn record_paired(&mut self, prompt_tokens: u64, response: &ResponseEvent, cost: Cost) {
        add(&mut self.requests, 1);
        add(&mut self.completed, 1);
        add(&mut self.errors, u64::from(response.is_error()));
        add(&mut self.latency_sum_ms, response.latency_ms);
        histogram::record(&mut self.latency, response.latency_ms);
        if let Some(ttft) = response.time_to_first_token_ms {
            add(&mut self.ttft_sum_ms, ttft);
            add(&mut self.ttft_count, 1);
            histogram::record(&mut self.ttft, ttft);
        }
        add(&mut self.prompt_tokens, prompt_tokens);
        add(&mut self.completion_tokens, response.completion_tokens);
        add(
            &mut self.cached_prompt_tokens,
            response
                .cached_prompt_tokens
                .unwrap_or(0)
                .min(prompt_tokens),
        );
        add(&mut self.cost_nanos, cost.nanos);
        add(&mut self.unpriced, u64::from(!cost.priced));
    }

    pub fn record_timeout(&mut self) {
        add(&mut self.requests, 1);
        add(&mut self.timeouts, 1);
    }

    pub fn merge(&mut self, other: &Aggregate) {
        add(&mut self.requests, other.requests);
        add(&mut self.errors, other.errors);
        add(&mut self.timeouts, other.timeouts);
        add(&mut self.completed, other.completed);
        add(&mut self.latency_sum_ms, other.latency_sum_ms);
        add(&mut self.ttft_sum_ms, other.ttft_sum_ms);
        add(&mut self.ttft_count, other.ttft_count);
        add(&mut self.prompt_tokens, other.prompt_tokens);
        add(&mut self.completion_tokens, other.completion_tokens);
        add(&mut self.cached_prompt_tokens, other.cached_prompt_tokens);
        add(&mut self.cost_nanos, other.cost_nanos);
        add(&mut self.unpriced, other.unpriced);
        // Same configuration everywhere, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.ttft.add(&other.ttft);
    }

    fn ratio(sum: u64, count: u64) -> f64 {
        if count == 0 {
            0.0
        } else {
            sum as f64 / count as f64
        }
    }

    pub fn avg_latency_ms(&self) -> f64 {
        Self::ratio(self.latency_sum_ms, self.completed)
    }

    pub fn avg_ttft_ms(&self) -> Option<f64> {
        (self.ttft_count > 0).then(|| Self::ratio(self.ttft_sum_ms, self.ttft_count))
    }

    pub fn avg_prompt_tokens(&self) -> f64 {
        Self::ratio(self.prompt_tokens, self.completed)
    }

    pub fn avg_completion_tokens(&self) -> f64 {
        Self::ratio(self.completion_tokens, self.completed)
    }

    /// A latency percentile (`q` in 0..=1), 0 for a window without paired requests.
    pub fn latency_quantile_ms(&self, q: f64) -> u64 {
        if self.latency.is_empty() {
            0
        } else {
            self.latency.value_at_quantile(q)
        }
    }
}

/// Sums saturate: a window's counters never wrap around or panic, whatever a producer wrote.
fn add(sum: &mut u64, value: u64) {
    *sum = sum.saturating_add(value);
}

impl Aggregate {
    /// The stored columns of a window row, in the order a row is read back.
    pub const COLUMNS: &'static str = "requests, errors, timeouts, completed, latency_sum_ms, \
        ttft_sum_ms, ttft_count, prompt_tokens, completion_tokens, cached_prompt_tokens, \
        cost_nanos, unpriced, latency_histogram, ttft_histogram";
}
