//! The aggregate behind a window row: sums and counts behind every average and the histograms
//! behind every percentile. Everything adds up under [`Aggregate::merge`], so partials from
//! restarts, partitions, processor instances and roll-ups over many windows combine exactly.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};

use crate::events::ResponseEvent;
use crate::histogram::{self, Lazy};
use crate::pricing::{PricingTable, Tokens};

/// The name under which a breakdown counts what it has no name for: a failure without a type,
/// and the names past [`Breakdown::MAX_NAMES`] (OpenTelemetry's fallback for `error.type`).
pub const OTHER: &str = "_OTHER";

/// Counts per name (calls per provider, errors per type), adding up under merge.
///
/// A window keeps at most [`Breakdown::MAX_NAMES`] names besides [`OTHER`], so a producer
/// that sends a new name with every call cannot grow a row without bound; past that, calls are
/// counted under `_OTHER`. Up to the bound every count is exact and merging is order-free;
/// the total is exact whatever the names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Breakdown(BTreeMap<String, u64>);

impl Breakdown {
    pub const MAX_NAMES: usize = 32;

    pub fn add(&mut self, name: &str, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(count) = self.0.get_mut(name) {
            add(count, n);
            return;
        }
        let named = self.0.len() - usize::from(self.0.contains_key(OTHER));
        let name = if named < Self::MAX_NAMES || name == OTHER {
            name
        } else {
            OTHER
        };
        add(self.0.entry(name.to_owned()).or_default(), n);
    }

    pub fn merge(&mut self, other: &Breakdown) {
        for (name, n) in &other.0 {
            self.add(name, *n);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    pub fn total(&self) -> u64 {
        self.0.values().fold(0, |t, n| t.saturating_add(*n))
    }

    pub fn as_map(&self) -> &BTreeMap<String, u64> {
        &self.0
    }
}

/// The cost of one call, and whether the model had a price of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    pub priced: bool,
    /// The cost of each token type, in the order of [`TOKEN_TYPES`].
    pub parts: [u64; 5],
}

impl Cost {
    /// The whole cost: the sum of its parts, so the two can never disagree.
    pub fn nanos(&self) -> u64 {
        self.parts.iter().fold(0, |t, p| t.saturating_add(*p))
    }
}

/// The token types a cost is split by, as the API and the stored columns name them.
pub const TOKEN_TYPES: [&str; 5] = [
    "input",
    "cached_input",
    "cache_write",
    "output",
    "reasoning",
];

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
    /// Prompt tokens written to the provider's cache (part of `prompt_tokens`).
    pub cache_creation_tokens: u64,
    /// Completion tokens spent reasoning (part of `completion_tokens`).
    pub reasoning_tokens: u64,
    pub cost_nanos: u64,
    /// `cost_nanos` by token type ([`TOKEN_TYPES`]); zero in windows written before costs
    /// were split.
    pub cost_parts_nanos: [u64; 5],
    /// Paired requests whose model has no price of its own.
    pub unpriced: u64,
    /// Their prompt and completion tokens: what the cost leaves out.
    pub unpriced_tokens: u64,
    /// Allocated when the first value lands (see [`Lazy`]).
    pub latency: Lazy,
    pub ttft: Lazy,
    /// Requests per provider, for the requests that name one.
    pub providers: Breakdown,
    /// Errors per type; adds up to `errors`.
    pub error_types: Breakdown,
}

impl Default for Aggregate {
    fn default() -> Self {
        Self::with_histograms(Lazy::standard(), Lazy::standard())
    }
}

impl Aggregate {
    /// An empty aggregate whose histograms grow with what is merged in
    /// ([`histogram::growing`]): for an answer's buckets, whose figures are read and never
    /// stored. Its percentiles are those of [`Aggregate::default`] given the same merges.
    pub fn lean() -> Self {
        Self::with_histograms(Lazy::growing(), Lazy::growing())
    }

    fn with_histograms(latency: Lazy, ttft: Lazy) -> Self {
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
            cache_creation_tokens: 0,
            reasoning_tokens: 0,
            cost_nanos: 0,
            cost_parts_nanos: [0; 5],
            unpriced: 0,
            unpriced_tokens: 0,
            latency,
            ttft,
            providers: Breakdown::default(),
            error_types: Breakdown::default(),
        }
    }
}

impl Aggregate {
    /// A call whose response came: `prompt_tokens` and `provider` are its request's.
    pub fn record_paired(
        &mut self,
        prompt_tokens: u64,
        provider: Option<&str>,
        response: &ResponseEvent,
        cost: Cost,
    ) {
        add(&mut self.requests, 1);
        add(&mut self.completed, 1);
        if let Some(provider) = provider {
            self.providers.add(provider, 1);
        }
        if let Some(error_type) = response.failure_type() {
            add(&mut self.errors, 1);
            self.error_types.add(error_type, 1);
        }
        add(&mut self.latency_sum_ms, response.latency_ms);
        histogram::record(&mut self.latency, response.latency_ms);
        if let Some(ttft) = response.time_to_first_token_ms {
            add(&mut self.ttft_sum_ms, ttft);
            add(&mut self.ttft_count, 1);
            histogram::record(&mut self.ttft, ttft);
        }
        // Capped as the cost is: parts never more than their whole.
        let tokens = Tokens::of(prompt_tokens, response).capped();
        add(&mut self.prompt_tokens, tokens.prompt);
        add(&mut self.completion_tokens, tokens.completion);
        add(&mut self.cached_prompt_tokens, tokens.cached);
        add(&mut self.cache_creation_tokens, tokens.cache_write);
        add(&mut self.reasoning_tokens, tokens.reasoning);
        add(&mut self.cost_nanos, cost.nanos());
        for (sum, part) in self.cost_parts_nanos.iter_mut().zip(cost.parts) {
            add(sum, part);
        }
        add(&mut self.unpriced, u64::from(!cost.priced));
        if !cost.priced {
            add(
                &mut self.unpriced_tokens,
                tokens.prompt.saturating_add(tokens.completion),
            );
        }
    }

    /// The window's token sums by type, as they were priced.
    pub fn tokens(&self) -> Tokens {
        Tokens {
            prompt: self.prompt_tokens,
            cached: self.cached_prompt_tokens,
            cache_write: self.cache_creation_tokens,
            completion: self.completion_tokens,
            reasoning: self.reasoning_tokens,
        }
    }

    /// Costs the window anew from its token sums at `table`'s prices for `model` at `at`
    /// ([`PricingTable::window_cost`]): what re-pricing history (at the window's own start)
    /// and answering at today's prices (at now) compute.
    pub fn reprice(&mut self, table: &PricingTable, model: &str, at: DateTime<Utc>) {
        let priced = table.window_cost(model, at, self.tokens(), self.completed);
        self.cost_parts_nanos = priced.cost.parts;
        self.cost_nanos = priced.cost.nanos();
        self.unpriced = priced.unpriced;
        self.unpriced_tokens = priced.unpriced_tokens;
    }

    /// A request whose response never came; `provider` is the request's.
    pub fn record_timeout(&mut self, provider: Option<&str>) {
        add(&mut self.requests, 1);
        add(&mut self.timeouts, 1);
        if let Some(provider) = provider {
            self.providers.add(provider, 1);
        }
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
        add(&mut self.cache_creation_tokens, other.cache_creation_tokens);
        add(&mut self.reasoning_tokens, other.reasoning_tokens);
        add(&mut self.cost_nanos, other.cost_nanos);
        for (sum, part) in self.cost_parts_nanos.iter_mut().zip(other.cost_parts_nanos) {
            add(sum, part);
        }
        add(&mut self.unpriced, other.unpriced);
        add(&mut self.unpriced_tokens, other.unpriced_tokens);
        // Same configuration everywhere, so adding cannot fail. An empty histogram adds
        // nothing (and leaves this one unallocated if it is).
        for (mine, theirs) in [
            (&mut self.latency, &other.latency),
            (&mut self.ttft, &other.ttft),
        ] {
            if !theirs.is_empty() {
                let _ = mine.add(&**theirs);
            }
        }
        self.providers.merge(&other.providers);
        self.error_types.merge(&other.error_types);
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

    /// Several latency percentiles in one pass over the histogram, `qs` in ascending order:
    /// each equal to [`Aggregate::latency_quantile_ms`] of it.
    pub fn latency_quantiles_ms<const N: usize>(&self, qs: [f64; N]) -> [u64; N] {
        histogram::quantiles(&self.latency, qs)
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
        cache_creation_tokens, reasoning_tokens, cost_nanos, unpriced, latency_histogram, \
        ttft_histogram, providers, error_types, cost_input_nanos, cost_cached_input_nanos, \
        cost_cache_write_nanos, cost_output_nanos, cost_reasoning_nanos, unpriced_tokens";

    /// [`Aggregate::COLUMNS`] as ranges are read: the TTFT histogram left out (NULL in its
    /// place, so every column keeps its position). Answers, alert rules and SLOs use TTFT's
    /// sums only, and a range query would otherwise read and merge a second histogram per row
    /// for nothing. What is read so is never stored.
    pub fn range_columns() -> &'static str {
        static RANGE: LazyLock<String> = LazyLock::new(|| {
            Aggregate::COLUMNS.replacen("ttft_histogram", "NULL::BYTEA AS ttft_histogram", 1)
        });
        &RANGE
    }

    /// The columns of `cost_parts_nanos`, in its order.
    pub const COST_COLUMNS: [&'static str; 5] = [
        "cost_input_nanos",
        "cost_cached_input_nanos",
        "cost_cache_write_nanos",
        "cost_output_nanos",
        "cost_reasoning_nanos",
    ];
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn response(completion: u64, cached: u64, created: u64, reasoning: u64) -> ResponseEvent {
        serde_json::from_value(serde_json::json!({
            "request_id": "r", "timestamp": "2024-05-01T00:00:00Z", "latency_ms": 10,
            "completion_tokens": completion, "finish_reason": "stop",
            "cached_prompt_tokens": cached, "cache_creation_tokens": created,
            "reasoning_tokens": reasoning,
        }))
        .unwrap()
    }

    const PRICED: Cost = Cost {
        priced: true,
        parts: [1, 0, 0, 0, 0],
    };

    proptest! {
        /// Percentiles read in one pass equal those read one at a time, on the full-size
        /// histograms windows keep and on the growing ones of roll-up answers.
        #[test]
        fn percentiles_in_one_pass_equal_each_read_alone(
            values in proptest::collection::vec(0u64..5_000_000, 0..300)
        ) {
            for mut a in [Aggregate::default(), Aggregate::lean()] {
                for &v in &values {
                    histogram::record(&mut a.latency, v);
                }
                let qs = [0.0, 0.5, 0.95, 0.99, 1.0];
                let alone = qs.map(|q| a.latency_quantile_ms(q));
                prop_assert_eq!(a.latency_quantiles_ms(qs), alone);
            }
        }
    }

    fn table(json: &str) -> PricingTable {
        PricingTable::with_file(json).unwrap()
    }

    proptest! {
        /// Re-pricing a window from its token sums gives what pricing each of its calls at
        /// those prices gave, for prices in whole nano-dollars a token; other prices differ
        /// by the rounding of each call, at most half a nano-dollar a call and type.
        #[test]
        fn a_repriced_window_equals_its_calls_priced_one_by_one(
            calls in proptest::collection::vec((0u64..5000, 0u64..3000, 0u64..6000, 0u64..2000, 0u64..4000), 1..40),
            whole in proptest::array::uniform5(0u64..100_000),
            odd in proptest::array::uniform5(0u64..100_000_000),
        ) {
            let at: DateTime<Utc> = "2026-03-01T10:07:00Z".parse().unwrap();
            let usd = |n: u64| n as f64 / 1e6;
            let file = |p: [u64; 5]| format!(
                r#"{{"models": {{"m": {{"input": {}, "cached_input": {}, "cache_write": {}, "output": {}, "reasoning": {}}}}}}}"#,
                usd(p[0]), usd(p[1]), usd(p[2]), usd(p[3]), usd(p[4]),
            );
            let whole_table = table(&file(whole.map(|p| p * 1000)));
            let odd_table = table(&file(odd));
            let old = table(r#"{"models": {"m": {"input": 7, "output": 9}}}"#);
            for (new, exact) in [(&whole_table, true), (&odd_table, false)] {
                let mut window = Aggregate::default();
                let mut scratch = Aggregate::default();
                for &(prompt, completion, cached, written, reasoning) in &calls {
                    let r = response(completion, cached, written, reasoning);
                    let tokens = Tokens::of(prompt, &r);
                    window.record_paired(prompt, None, &r, old.cost("m", at, tokens));
                    scratch.record_paired(prompt, None, &r, new.cost("m", at, tokens));
                }
                window.reprice(new, "m", at);
                if exact {
                    prop_assert_eq!(&window, &scratch);
                } else {
                    let n = calls.len() as u64;
                    for (a, b) in window.cost_parts_nanos.iter().zip(scratch.cost_parts_nanos) {
                        prop_assert!(a.abs_diff(b) <= n.div_ceil(2), "{} vs {}", a, b);
                    }
                    prop_assert_eq!(window.cost_parts_nanos.iter().sum::<u64>(), window.cost_nanos);
                }
            }
        }
    }

    #[test]
    fn a_window_repriced_without_a_price_counts_every_completed_call_unpriced() {
        let at: DateTime<Utc> = "2026-03-01T10:07:00Z".parse().unwrap();
        let priced = table(
            r#"{"models": {"m": [{"input": 1, "output": 2}, {"valid_from": "2026-03-01T10:08:00Z", "input": 3, "output": 4}]}}"#,
        );
        let mut a = Aggregate::default();
        let r = response(1_000_000, 0, 0, 0);
        a.record_paired(
            1_000_000,
            None,
            &r,
            priced.cost("m", at, Tokens::of(1_000_000, &r)),
        );
        a.record_timeout(None);
        assert_eq!((a.cost_nanos, a.unpriced), (3_000_000_000, 0));
        // The next minute's price applies to the next minute's windows only.
        let mut later = a.clone();
        later.reprice(&priced, "m", at + chrono::TimeDelta::minutes(1));
        assert_eq!(later.cost_nanos, 7_000_000_000);
        a.reprice(&PricingTable::default(), "in-house", at);
        assert_eq!(
            (a.cost_nanos, a.cost_parts_nanos, a.unpriced),
            (0, [0; 5], 1)
        );
        a.reprice(&priced, "m", at);
        assert_eq!((a.cost_nanos, a.unpriced), (3_000_000_000, 0));
    }

    /// Windows without time-to-first-token values never allocate that histogram, merged or
    /// not, and a merge of an empty histogram leaves the target's unallocated.
    #[test]
    fn histograms_are_allocated_only_for_values() {
        let r = response(50, 70, 0, 0);
        assert_eq!(r.time_to_first_token_ms, None);
        let mut a = Aggregate::default();
        a.record_paired(100, None, &r, PRICED);
        assert!(a.latency.is_allocated() && !a.ttft.is_allocated());
        let mut sum = Aggregate::lean();
        sum.merge(&Aggregate::default());
        assert!(!sum.latency.is_allocated() && !sum.ttft.is_allocated());
        sum.merge(&a);
        assert!(sum.latency.is_allocated() && !sum.ttft.is_allocated());
        assert_eq!(
            sum.latency_quantiles_ms([0.5]),
            a.latency_quantiles_ms([0.5])
        );
    }

    #[test]
    fn cache_reads_and_writes_together_never_exceed_the_prompt() {
        let mut a = Aggregate::default();
        a.record_paired(100, None, &response(50, 70, 20, 10), PRICED);
        a.record_paired(100, None, &response(50, 70, 60, 80), PRICED);
        assert_eq!(a.cached_prompt_tokens, 140);
        assert_eq!(a.cache_creation_tokens, 20 + 30); // the second capped at 100 - 70
        assert_eq!(a.reasoning_tokens, 10 + 50); // capped at the completion
    }

    #[test]
    fn a_breakdown_keeps_its_names_up_to_the_bound_and_counts_the_rest_as_other() {
        let mut b = Breakdown::default();
        for i in 0..40 {
            b.add(&format!("type-{i:02}"), 2);
        }
        b.add("type-00", 1);
        b.add(OTHER, 1);
        assert_eq!(b.iter().count(), Breakdown::MAX_NAMES + 1);
        assert_eq!(b.total(), 40 * 2 + 2);
        let other = b.iter().find(|(name, _)| *name == OTHER).unwrap().1;
        assert_eq!(other, 8 * 2 + 1);
        assert_eq!(b.iter().find(|(n, _)| *n == "type-00").unwrap().1, 3);
    }

    proptest! {
        /// However the calls are split into partials and in whatever order the partials merge
        /// (restarts, partitions, instances, roll-ups), the result is the one aggregate of all.
        #[test]
        fn partials_merge_into_the_aggregate_of_all_calls(
            calls in prop::collection::vec(
                (0u64..1000, 0u64..1200, 0u64..1200, 0u64..300, 0u64..400,
                 prop::option::of(0usize..6), prop::option::of(0usize..6), any::<bool>()),
                1..60,
            ),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
            order in any::<u64>(),
        ) {
            let providers = ["openai", "anthropic", "gcp.gemini", "mistral_ai", "aws.bedrock", "x"];
            let errors = ["timeout", "rate_limit", "500", "invalid_request", "_OTHER", "429"];
            let record = |a: &mut Aggregate, call: &(u64, u64, u64, u64, u64, Option<usize>, Option<usize>, bool)| {
                let (prompt, cached, created, completion, reasoning, provider, error, paired) = *call;
                let provider = provider.map(|p| providers[p]);
                if !paired {
                    a.record_timeout(provider);
                    return;
                }
                let mut r = response(completion, cached, created, reasoning.min(completion));
                r.error_type = error.map(|e| errors[e].parse().unwrap());
                a.record_paired(prompt, provider, &r, PRICED);
            };
            let mut whole = Aggregate::default();
            for call in &calls {
                record(&mut whole, call);
            }
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(calls.len())).collect();
            at.extend([0, calls.len()]);
            at.sort_unstable();
            let mut partials: Vec<Aggregate> = at
                .windows(2)
                .map(|w| {
                    let mut a = Aggregate::default();
                    for call in &calls[w[0]..w[1]] {
                        record(&mut a, call);
                    }
                    a
                })
                .collect();
            let n = partials.len();
            partials.rotate_left((order as usize) % n);
            if order % 2 == 1 {
                partials.reverse();
            }
            let mut merged = Aggregate::default();
            for p in &partials {
                merged.merge(p);
            }
            prop_assert_eq!(&merged, &whole);
            prop_assert_eq!(whole.error_types.total(), whole.errors);
            prop_assert!(whole.providers.total() <= whole.requests);
            prop_assert!(whole.cached_prompt_tokens + whole.cache_creation_tokens <= whole.prompt_tokens);
            prop_assert!(whole.reasoning_tokens <= whole.completion_tokens);
            prop_assert_eq!(whole.cost_parts_nanos.iter().sum::<u64>(), whole.cost_nanos);
        }
    }
}
