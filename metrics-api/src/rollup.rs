//! Roll-ups: stored one-minute windows merged into wider buckets and coarser groups.
//! Sums add, histograms merge, and every average and percentile is computed once from the
//! merged whole; nothing is averaged from averages.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use infra::db::{i64_of, RowError, StoredAggregate};
use metrics_core::aggregate::{Aggregate, Breakdown, TOKEN_TYPES};
use metrics_core::histogram;
use metrics_core::pricing::{PricingTable, Tokens};
use serde::Serialize;
use sqlx::postgres::PgRow;
use utoipa::ToSchema;

use crate::query::{Granularity, GroupBy};

/// What a window adds to a roll-up: an aggregate, or a stored row whose histograms are added
/// straight from their encoding (no histogram is built per row).
pub trait Contribution {
    fn add_to(&self, a: &mut Aggregate) -> Result<(), RowError>;

    /// Adds all but the latency histogram and hands that back encoded, if the contribution
    /// holds it so (a stored row); `None` when it was added with the rest.
    fn add_but_latency(&self, a: &mut Aggregate) -> Result<Option<Vec<u8>>, RowError> {
        self.add_to(a).map(|()| None)
    }
}

impl Contribution for Aggregate {
    fn add_to(&self, a: &mut Aggregate) -> Result<(), RowError> {
        a.merge(self);
        Ok(())
    }
}

impl Contribution for PgRow {
    fn add_to(&self, a: &mut Aggregate) -> Result<(), RowError> {
        a.merge_row(self)
    }

    fn add_but_latency(&self, a: &mut Aggregate) -> Result<Option<Vec<u8>>, RowError> {
        Ok(a.merge_row_but_latency(self)?.map(<[u8]>::to_vec))
    }
}

/// The latency figures of an answer, in this order: p50, p95, p99 and the highest.
const LATENCY_QUANTILES: [f64; 4] = [0.5, 0.95, 0.99, 1.0];

/// Today's prices, for an answer asked at them (`pricing=current`): each window's calls are
/// costed from its token sums at the prices `table` has for its model at `at`.
#[derive(Debug, Clone, Copy)]
pub struct AtPrices<'a> {
    pub table: &'a PricingTable,
    pub at: DateTime<Utc>,
}

/// Adds a window of `model` to `a` by `adding` it, its cost as recorded or at `prices`
/// (`model` matters only then).
fn add<T>(
    adding: impl FnOnce(&mut Aggregate) -> Result<T, RowError>,
    model: &str,
    a: &mut Aggregate,
    prices: Option<AtPrices>,
) -> Result<T, RowError> {
    let Some(AtPrices { table, at }) = prices else {
        return adding(a);
    };
    let (before, completed, parts, unpriced, unpriced_tokens) = (
        a.tokens(),
        a.completed,
        a.cost_parts_nanos,
        a.unpriced,
        a.unpriced_tokens,
    );
    let added = adding(a)?;
    // What the window added, costed anew in place of its recorded cost.
    let after = a.tokens();
    let tokens = Tokens {
        prompt: after.prompt - before.prompt,
        cached: after.cached - before.cached,
        cache_write: after.cache_write - before.cache_write,
        completion: after.completion - before.completion,
        reasoning: after.reasoning - before.reasoning,
    };
    let priced = table.window_cost(model, at, tokens, a.completed - completed);
    for ((sum, was), part) in a
        .cost_parts_nanos
        .iter_mut()
        .zip(parts)
        .zip(priced.cost.parts)
    {
        *sum = was.saturating_add(part);
    }
    a.cost_nanos = a
        .cost_parts_nanos
        .iter()
        .fold(0, |t, p| t.saturating_add(*p));
    a.unpriced = unpriced + priced.unpriced;
    a.unpriced_tokens = unpriced_tokens + priced.unpriced_tokens;
    Ok(added)
}

/// One stored window as a roll-up reads it.
#[derive(Debug, Clone)]
pub struct Window<C = Aggregate> {
    pub route: String,
    pub model: String,
    pub start: DateTime<Utc>,
    pub aggregate: C,
}

/// A bucket of a roll-up: its start and the route/model it stands for (`None` where the
/// grouping merged them).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bucket {
    pub start: DateTime<Utc>,
    pub route: Option<String>,
    pub model: Option<String>,
}

/// A bucket of a roll-up.
#[derive(Debug, Clone)]
pub struct Rolled {
    /// Its windows merged; the latency histogram is left empty in a bucket of one stored row
    /// (see `latency`).
    pub aggregate: Aggregate,
    /// p50, p95, p99 and the highest latency. A bucket of one stored row (every bucket of a
    /// query that reads the roll-up rows of its own grouping) has them read straight from the
    /// row's encoded histogram, which is never built.
    pub latency: [u64; 4],
    /// While rolling up: the encoded latency histogram of the bucket's only row so far, not
    /// yet added to `aggregate`.
    only: Option<Vec<u8>>,
    rows: usize,
}

/// Merges windows into buckets of `granularity`, grouped by `group_by`.
pub fn roll_up<C: Contribution>(
    windows: impl IntoIterator<Item = Window<C>>,
    granularity: Granularity,
    group_by: GroupBy,
    prices: Option<AtPrices>,
) -> Result<BTreeMap<Bucket, Rolled>, RowError> {
    let mut out: BTreeMap<Bucket, Rolled> = BTreeMap::new();
    for w in windows {
        // The model's name is needed apart only to cost the window anew.
        let priced = prices.is_some().then(|| w.model.clone());
        let model = priced.as_deref().unwrap_or_default();
        let bucket = Bucket {
            start: granularity.bucket(w.start),
            route: group_by.route.then_some(w.route),
            model: group_by.model.then_some(w.model),
        };
        let r = out.entry(bucket).or_insert_with(|| Rolled {
            aggregate: Aggregate::lean(),
            latency: [0; 4],
            only: None,
            rows: 0,
        });
        if r.rows == 0 {
            r.only = add(
                |a| w.aggregate.add_but_latency(a),
                model,
                &mut r.aggregate,
                prices,
            )?;
        } else {
            if let Some(first) = r.only.take() {
                histogram::add_encoded(&mut r.aggregate.latency, &first)?;
            }
            add(|a| w.aggregate.add_to(a), model, &mut r.aggregate, prices)?;
        }
        r.rows += 1;
    }
    for r in out.values_mut() {
        r.latency = match r.only.take() {
            Some(encoded) => histogram::quantiles_encoded(&encoded, LATENCY_QUANTILES)?,
            None => r.aggregate.latency_quantiles_ms(LATENCY_QUANTILES),
        };
    }
    Ok(out)
}

/// One row of an answer: a stored window, or a bucket of a roll-up.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct MetricsItem {
    pub tenant_id: String,
    /// `null` when the roll-up merged routes.
    pub route: Option<String>,
    /// `null` when the roll-up merged models.
    pub model: Option<String>,
    #[serde(serialize_with = "utc_timestamp")]
    pub window_start: DateTime<Utc>,
    #[serde(serialize_with = "utc_timestamp")]
    pub window_end: DateTime<Utc>,
    #[serde(flatten)]
    pub figures: Figures,
    pub max_latency_ms: f64,
    /// `null` when no call reported its time to first token.
    pub avg_ttft_ms: Option<f64>,
    pub avg_prompt_tokens: f64,
    pub avg_completion_tokens: f64,
}

pub fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

impl MetricsItem {
    pub fn of_bucket(tenant: &str, bucket: &Bucket, width: chrono::TimeDelta, r: &Rolled) -> Self {
        let a = &r.aggregate;
        let [p50, p95, p99, max] = r.latency;
        let figures = Figures::with_latency(a, [p50, p95, p99]);
        Self {
            tenant_id: tenant.to_owned(),
            route: bucket.route.clone(),
            model: bucket.model.clone(),
            window_start: bucket.start,
            window_end: bucket.start + width,
            figures,
            max_latency_ms: max as f64,
            avg_ttft_ms: a.avg_ttft_ms(),
            avg_prompt_tokens: a.avg_prompt_tokens(),
            avg_completion_tokens: a.avg_completion_tokens(),
        }
    }

    /// Appends the item's JSON: the bytes serde_json writes for it (a property test holds the
    /// two equal), with each key copied rather than run through the escaping every key of a
    /// derived serializer goes through, which was a tenth of a range answer's time.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let f = &self.figures;
        macro_rules! fields {
            ($($key:literal => $value:expr),+ $(,)?) => {$(
                out.extend_from_slice(concat!("\"", $key, "\":").as_bytes());
                json(out, $value);
                out.push(b',');
            )+};
        }
        out.push(b'{');
        fields! {
            "tenant_id" => &self.tenant_id,
            "route" => &self.route,
            "model" => &self.model,
        }
        for (key, t) in [
            ("\"window_start\":", &self.window_start),
            ("\"window_end\":", &self.window_end),
        ] {
            out.extend_from_slice(key.as_bytes());
            let _ = utc_timestamp(t, &mut serde_json::Serializer::new(&mut *out));
            out.push(b',');
        }
        fields! {
            "requests" => &f.requests,
            "errors" => &f.errors,
            "timeouts" => &f.timeouts,
            "error_rate" => &f.error_rate,
            "timeout_rate" => &f.timeout_rate,
            "avg_latency_ms" => &f.avg_latency_ms,
            "p50_latency_ms" => &f.p50_latency_ms,
            "p95_latency_ms" => &f.p95_latency_ms,
            "p99_latency_ms" => &f.p99_latency_ms,
            "prompt_tokens" => &f.prompt_tokens,
            "completion_tokens" => &f.completion_tokens,
            "total_tokens" => &f.total_tokens,
            "cached_prompt_tokens" => &f.cached_prompt_tokens,
            "cache_creation_tokens" => &f.cache_creation_tokens,
            "reasoning_tokens" => &f.reasoning_tokens,
            "estimated_cost_usd" => &f.estimated_cost_usd,
            "cost_by_type_usd" => &f.cost_by_type_usd,
            "unpriced" => &f.unpriced,
            "unpriced_tokens" => &f.unpriced_tokens,
            "providers" => &f.providers,
            "error_types" => &f.error_types,
            "max_latency_ms" => &self.max_latency_ms,
            "avg_ttft_ms" => &self.avg_ttft_ms,
            "avg_prompt_tokens" => &self.avg_prompt_tokens,
            "avg_completion_tokens" => &self.avg_completion_tokens,
        }
        // The last field's comma closes the object instead.
        if let Some(last) = out.last_mut() {
            *last = b'}';
        }
    }
}

/// Writes `value` as serde_json writes it; writing into memory cannot fail.
fn json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Windows or roll-up buckets, newest first, in the original shape plus the granularity.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsAnswer {
    pub metrics: Vec<MetricsItem>,
    pub count: usize,
    pub granularity: &'static str,
}

impl MetricsAnswer {
    /// The answer's JSON, the bytes serde_json writes for it, items by
    /// [`MetricsItem::write_json`].
    pub fn to_json(&self) -> Vec<u8> {
        // An item is about 750 bytes.
        let mut out = Vec::with_capacity(64 + self.metrics.len() * 800);
        out.extend_from_slice(b"{\"metrics\":[");
        for (i, item) in self.metrics.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            item.write_json(&mut out);
        }
        out.extend_from_slice(b"],\"count\":");
        json(&mut out, &self.count);
        out.extend_from_slice(b",\"granularity\":");
        json(&mut out, self.granularity);
        out.push(b'}');
        out
    }
}

/// A roll-up as an answer: newest bucket first, at most `limit` rows.
pub fn items(
    tenant: &str,
    rolled: BTreeMap<Bucket, Rolled>,
    granularity: Granularity,
    limit: usize,
) -> Vec<MetricsItem> {
    rolled
        .iter()
        .rev()
        .take(limit)
        .map(|(b, r)| MetricsItem::of_bucket(tenant, b, granularity.width(), r))
        .collect()
}

/// A tenant's range at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Summary {
    pub tenant_id: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub totals: Figures,
    pub top_models_by_requests: Vec<Ranked>,
    pub top_models_by_cost: Vec<Ranked>,
    pub top_routes_by_requests: Vec<Ranked>,
    pub top_routes_by_cost: Vec<Ranked>,
    /// Every model with calls the price table had no price for (counted in `unpriced`, not
    /// in the cost), most such calls first.
    pub unpriced_models: Vec<Ranked>,
}

/// The figures of a window, a bucket or a range. Percentiles come from merged histograms.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Figures {
    pub requests: i64,
    pub errors: i64,
    pub timeouts: i64,
    pub error_rate: f64,
    pub timeout_rate: f64,
    pub avg_latency_ms: f64,
    pub p50_latency_ms: f64,
    pub p95_latency_ms: f64,
    pub p99_latency_ms: f64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    /// Prompt tokens read from the provider's cache (part of `prompt_tokens`).
    pub cached_prompt_tokens: i64,
    /// Prompt tokens written to the provider's cache (part of `prompt_tokens`).
    pub cache_creation_tokens: i64,
    /// Completion tokens spent reasoning (part of `completion_tokens`).
    pub reasoning_tokens: i64,
    pub estimated_cost_usd: f64,
    /// `estimated_cost_usd` by token type: `input`, `cached_input`, `cache_write`, `output`,
    /// `reasoning` (zeros for windows written before costs were split).
    #[schema(value_type = BTreeMap<String, f64>)]
    pub cost_by_type_usd: CostByType,
    /// Calls of models without a price: not in `estimated_cost_usd`.
    pub unpriced: i64,
    /// Their prompt and completion tokens.
    pub unpriced_tokens: i64,
    /// Requests per provider, for the requests that name one.
    pub providers: BTreeMap<String, i64>,
    /// Errors per type (`_OTHER` for failures without one); adds up to `errors`.
    pub error_types: BTreeMap<String, i64>,
}

/// Nano-dollars by token type ([`TOKEN_TYPES`]' order), shown as an object from each type's
/// name to its USD, the names in alphabetical order (as a map of them would have them). Written
/// straight from the sums: an answer's items are the bulk of its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostByType(pub [u64; 5]);

impl Serialize for CostByType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        static ALPHABETICAL: LazyLock<[usize; 5]> = LazyLock::new(|| {
            let mut order = [0, 1, 2, 3, 4];
            order.sort_by_key(|&i| TOKEN_TYPES[i]);
            order
        });
        let mut map = serializer.serialize_map(Some(TOKEN_TYPES.len()))?;
        for &i in ALPHABETICAL.iter() {
            map.serialize_entry(TOKEN_TYPES[i], &(self.0[i] as f64 / 1e9))?;
        }
        map.end()
    }
}

/// A whole second in UTC, as chrono shows it (`2026-12-07T08:05:00Z`), written without
/// chrono's formatting machinery, which cost more than the rest of an item's figures; any
/// other instant (a fraction of a second, a year past 9999) as chrono writes it.
fn utc_timestamp<S: serde::Serializer>(
    t: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use chrono::{Datelike, Timelike};
    let year = t.year();
    if t.nanosecond() != 0 || !(0..=9999).contains(&year) {
        return t.serialize(serializer);
    }
    let mut out = *b"0000-00-00T00:00:00Z";
    let mut put = |at: usize, digits: usize, mut value: u32| {
        for slot in out[at..at + digits].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year.unsigned_abs());
    put(5, 2, t.month());
    put(8, 2, t.day());
    put(11, 2, t.hour());
    put(14, 2, t.minute());
    put(17, 2, t.second());
    serializer.serialize_str(std::str::from_utf8(&out).map_err(serde::ser::Error::custom)?)
}

/// A breakdown as the API shows it.
pub fn counts(b: &Breakdown) -> BTreeMap<String, i64> {
    b.iter().map(|(k, n)| (k.to_owned(), i64_of(n))).collect()
}

impl Figures {
    pub fn of(a: &Aggregate) -> Self {
        let [p50, p95, p99] = a.latency_quantiles_ms([0.5, 0.95, 0.99]);
        Self::with_latency(a, [p50, p95, p99])
    }

    /// The figures of `a` with its p50, p95 and p99 latency as given.
    fn with_latency(a: &Aggregate, [p50, p95, p99]: [u64; 3]) -> Self {
        Self {
            requests: i64_of(a.requests),
            errors: i64_of(a.errors),
            timeouts: i64_of(a.timeouts),
            error_rate: rate(a.errors, a.requests),
            timeout_rate: rate(a.timeouts, a.requests),
            avg_latency_ms: a.avg_latency_ms(),
            p50_latency_ms: p50 as f64,
            p95_latency_ms: p95 as f64,
            p99_latency_ms: p99 as f64,
            prompt_tokens: i64_of(a.prompt_tokens),
            completion_tokens: i64_of(a.completion_tokens),
            total_tokens: i64_of(a.prompt_tokens.saturating_add(a.completion_tokens)),
            cached_prompt_tokens: i64_of(a.cached_prompt_tokens),
            cache_creation_tokens: i64_of(a.cache_creation_tokens),
            reasoning_tokens: i64_of(a.reasoning_tokens),
            estimated_cost_usd: a.cost_nanos as f64 / 1e9,
            cost_by_type_usd: CostByType(a.cost_parts_nanos),
            unpriced: i64_of(a.unpriced),
            unpriced_tokens: i64_of(a.unpriced_tokens),
            providers: counts(&a.providers),
            error_types: counts(&a.error_types),
        }
    }
}

/// A model or route among the top ones.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Ranked {
    pub name: String,
    #[serde(flatten)]
    pub figures: Figures,
}

fn top<'a>(
    groups: impl IntoIterator<Item = (&'a String, &'a Aggregate)>,
    n: usize,
    by: impl Fn(&Aggregate) -> u64,
) -> Vec<Ranked> {
    let mut ranked: Vec<_> = groups.into_iter().collect();
    // Largest first; ties by name, so the answer does not depend on storage order.
    ranked.sort_by(|(na, a), (nb, b)| by(b).cmp(&by(a)).then_with(|| na.cmp(nb)));
    ranked
        .into_iter()
        .take(n)
        .map(|(name, a)| Ranked {
            name: name.clone(),
            figures: Figures::of(a),
        })
        .collect()
}

pub fn summarize<C: Contribution>(
    tenant: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    windows: impl IntoIterator<Item = Window<C>>,
    n: usize,
    prices: Option<AtPrices>,
) -> Result<Summary, RowError> {
    // Each window is read once, into its (route, model); the few pairs then add up into the
    // totals and the per-model and per-route figures.
    let mut pairs: BTreeMap<(String, String), Aggregate> = BTreeMap::new();
    for w in windows {
        let priced = prices.is_some().then(|| w.model.clone());
        let pair = pairs
            .entry((w.route, w.model))
            .or_insert_with(Aggregate::lean);
        add(
            |a| w.aggregate.add_to(a),
            priced.as_deref().unwrap_or_default(),
            pair,
            prices,
        )?;
    }
    let mut totals = Aggregate::lean();
    let mut models: BTreeMap<String, Aggregate> = BTreeMap::new();
    let mut routes: BTreeMap<String, Aggregate> = BTreeMap::new();
    for ((route, model), a) in &pairs {
        totals.merge(a);
        models
            .entry(model.clone())
            .or_insert_with(Aggregate::lean)
            .merge(a);
        routes
            .entry(route.clone())
            .or_insert_with(Aggregate::lean)
            .merge(a);
    }
    Ok(Summary {
        tenant_id: tenant.to_owned(),
        from,
        to,
        totals: Figures::of(&totals),
        top_models_by_requests: top(&models, n, |a| a.requests),
        top_models_by_cost: top(&models, n, |a| a.cost_nanos),
        top_routes_by_requests: top(&routes, n, |a| a.requests),
        top_routes_by_cost: top(&routes, n, |a| a.cost_nanos),
        unpriced_models: top(
            models.iter().filter(|(_, a)| a.unpriced > 0),
            usize::MAX,
            |a| a.unpriced,
        ),
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use metrics_core::aggregate::Cost;
    use metrics_core::events::ResponseEvent;
    use metrics_core::histogram;
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Timestamps read exactly as chrono writes them, whole seconds (the fast path) or not.
        #[test]
        fn timestamps_are_written_as_chrono_writes_them(
            seconds in -62_135_596_800i64..300_000_000_000,
            nanos in prop_oneof![Just(0u32), 0u32..1_000_000_000],
        ) {
            let t = DateTime::from_timestamp(seconds, nanos).unwrap();
            let mut ours = Vec::new();
            utc_timestamp(&t, &mut serde_json::Serializer::new(&mut ours)).unwrap();
            prop_assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&t).unwrap());
        }

        /// An answer written by `to_json` is byte for byte what serde_json writes for it:
        /// names that need escaping, missing routes and models, fractions of seconds,
        /// non-finite and integral figures, breakdowns.
        #[test]
        fn answers_are_written_as_serde_writes_them(
            items in prop::collection::vec(any_item(), 0..4),
            granularity in prop_oneof![Just("1m"), Just("5m"), Just("1h")],
        ) {
            let answer = MetricsAnswer { count: items.len(), metrics: items, granularity };
            prop_assert_eq!(
                String::from_utf8(answer.to_json()).unwrap(),
                serde_json::to_string(&answer).unwrap()
            );
        }

        /// Costs by type read as a map of the type names to USD.
        #[test]
        fn costs_by_type_read_as_a_map_of_their_names(parts in prop::array::uniform5(0u64..u64::MAX)) {
            let map: BTreeMap<&str, f64> =
                TOKEN_TYPES.iter().zip(parts).map(|(t, n)| (*t, n as f64 / 1e9)).collect();
            prop_assert_eq!(
                serde_json::to_string(&CostByType(parts)).unwrap(),
                serde_json::to_string(&map).unwrap()
            );
        }
    }

    fn any_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            (0i64..10_000).prop_map(|n| n as f64),
            Just(f64::NAN),
            Just(f64::INFINITY)
        ]
    }

    fn any_item() -> impl Strategy<Value = MetricsItem> {
        let name = "[a-z/\"\\\\\u{1}-\u{1f}é☃-]{0,12}";
        let counts = prop::collection::btree_map(name, any::<i64>(), 0..3);
        (
            (name, prop::option::of(name), prop::option::of(name)),
            (
                -62_135_596_800i64..300_000_000_000,
                prop_oneof![Just(0u32), 0u32..1_000_000_000],
            ),
            prop::array::uniform5(any::<i64>()),
            prop::array::uniform8(any_f64()),
            (
                prop::array::uniform5(any::<u64>()),
                prop::array::uniform6(any::<i64>()),
            ),
            (counts.clone(), counts, prop::option::of(any_f64())),
        )
            .prop_map(
                |(
                    (tenant, route, model),
                    (secs, nanos),
                    n,
                    x,
                    (parts, m),
                    (providers, error_types, ttft),
                )| {
                    let start = DateTime::from_timestamp(secs, nanos).unwrap();
                    MetricsItem {
                        tenant_id: tenant,
                        route,
                        model,
                        window_start: start,
                        window_end: start + TimeDelta::minutes(5),
                        figures: Figures {
                            requests: n[0],
                            errors: n[1],
                            timeouts: n[2],
                            error_rate: x[0],
                            timeout_rate: x[1],
                            avg_latency_ms: x[2],
                            p50_latency_ms: x[3],
                            p95_latency_ms: x[4],
                            p99_latency_ms: x[5],
                            prompt_tokens: n[3],
                            completion_tokens: n[4],
                            total_tokens: m[0],
                            cached_prompt_tokens: m[1],
                            cache_creation_tokens: m[2],
                            reasoning_tokens: m[3],
                            estimated_cost_usd: x[6],
                            cost_by_type_usd: CostByType(parts),
                            unpriced: m[4],
                            unpriced_tokens: m[5],
                            providers,
                            error_types,
                        },
                        max_latency_ms: x[7],
                        avg_ttft_ms: ttft,
                        avg_prompt_tokens: x[0] * 3.0,
                        avg_completion_tokens: x[1] / 7.0,
                    }
                },
            )
    }

    /// A call of `latency_ms`; every seventh fails, every fourteenth with a type; a tenth of
    /// the completion spent reasoning.
    fn response(latency_ms: u64, error: bool) -> ResponseEvent {
        serde_json::from_value(serde_json::json!({
            "request_id": "r", "timestamp": "2024-05-01T00:00:00Z", "latency_ms": latency_ms,
            "completion_tokens": 10, "reasoning_tokens": 1, "finish_reason": "stop",
            "error": if error { Some("boom") } else { None },
            "error_type": if error && latency_ms.is_multiple_of(2) { Some("rate_limit") } else { None },
        }))
        .unwrap()
    }

    fn window(route: &str, model: &str, minute: i64, latencies: &[u64]) -> Window {
        let mut aggregate = Aggregate::default();
        for &l in latencies {
            aggregate.record_paired(
                100,
                Some(if model == "big" {
                    "anthropic"
                } else {
                    "openai"
                }),
                &response(l, l % 7 == 0),
                Cost {
                    priced: true,
                    parts: [1_000, 0, 0, 0, 0],
                },
            );
        }
        Window {
            route: route.into(),
            model: model.into(),
            start: "2024-05-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
                + TimeDelta::minutes(minute),
            aggregate,
        }
    }

    #[test]
    fn five_minute_buckets_per_model_add_up_and_average_from_sums() {
        let windows = vec![
            window("/a", "m1", 0, &[100, 200]),
            window("/b", "m1", 4, &[300]),
            window("/a", "m1", 5, &[50]),
            window("/a", "m2", 1, &[1000]),
        ];
        let rolled = roll_up(
            windows,
            Granularity::FiveMinutes,
            GroupBy {
                route: false,
                model: true,
            },
            None,
        )
        .unwrap();
        let got = items("t", rolled, Granularity::FiveMinutes, 10);
        let shape: Vec<_> = got
            .iter()
            .map(|i| {
                (
                    i.window_start.format("%M").to_string(),
                    i.model.clone(),
                    i.figures.requests,
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("05".into(), Some("m1".into()), 1),
                ("00".into(), Some("m2".into()), 1),
                ("00".into(), Some("m1".into()), 3)
            ]
        );
        let first_bucket = &got[2];
        assert_eq!(first_bucket.figures.avg_latency_ms, 200.0); // (100 + 200 + 300) / 3, not the mean of means
        assert_eq!(first_bucket.route, None);
        assert_eq!(
            first_bucket.window_end - first_bucket.window_start,
            TimeDelta::minutes(5)
        );
        assert_eq!(first_bucket.figures.estimated_cost_usd, 3e-6);
    }

    #[test]
    fn at_current_prices_each_window_is_costed_anew_for_its_own_model() {
        let table =
            PricingTable::with_file(r#"{"models": {"big": {"input": 2, "output": 4}}}"#).unwrap();
        let at = "2026-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let windows = vec![
            window("/a", "big", 0, &[10, 20]),
            window("/b", "small", 1, &[30]),
            window("/a", "big", 2, &[40]),
        ];
        let mut expected = [0; 5];
        for w in windows.iter().filter(|w| w.model == "big") {
            let priced = table.window_cost("big", at, w.aggregate.tokens(), 0);
            for (sum, part) in expected.iter_mut().zip(priced.cost.parts) {
                *sum += part;
            }
        }
        assert!(expected[0] >= 3 * 100 * 2_000, "{expected:?}");
        let prices = Some(AtPrices { table: &table, at });
        let all = GroupBy {
            route: false,
            model: false,
        };
        let rolled = roll_up(windows.clone(), Granularity::Hour, all, prices).unwrap();
        let a = rolled.into_values().next().unwrap().aggregate;
        assert_eq!(a.cost_parts_nanos, expected);
        assert_eq!(a.cost_nanos, expected.iter().sum::<u64>());
        assert_eq!(
            (a.unpriced, a.requests),
            (1, 4),
            "the model without a price"
        );
        let recorded = roll_up(windows.clone(), Granularity::Hour, all, None).unwrap();
        let r = recorded.into_values().next().unwrap().aggregate;
        assert_eq!((r.cost_nanos, r.unpriced), (4_000, 0), "as recorded");

        let s = summarize("t", at, at + TimeDelta::hours(1), windows, 5, prices).unwrap();
        assert_eq!(
            s.totals.estimated_cost_usd,
            expected.iter().sum::<u64>() as f64 / 1e9
        );
        let unpriced: Vec<_> = s.unpriced_models.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(unpriced, ["small"]);
    }

    #[test]
    fn the_limit_keeps_the_newest_buckets() {
        let windows: Vec<_> = (0..10).map(|m| window("/a", "m", m * 60, &[10])).collect();
        let rolled = roll_up(windows, Granularity::Hour, GroupBy::ALL, None).unwrap();
        let got = items("t", rolled, Granularity::Hour, 3);
        assert_eq!(
            got.iter()
                .map(|i| i.window_start.format("%H").to_string())
                .collect::<Vec<_>>(),
            ["09", "08", "07"]
        );
    }

    #[test]
    fn a_summary_ranks_models_and_routes_by_requests_and_by_cost() {
        let mut pricey = window("/b", "big", 2, &[900]);
        pricey.aggregate.cost_nanos = 50_000_000;
        let windows = vec![
            window("/a", "small", 0, &[10, 21, 30]),
            window("/a", "small", 1, &[70]),
            pricey,
        ];
        let from = "2024-05-01T00:00:00Z".parse().unwrap();
        let s = summarize("t", from, from + TimeDelta::hours(1), windows, 5, None).unwrap();
        assert_eq!(s.totals.requests, 5);
        assert_eq!(s.totals.avg_latency_ms, 206.2); // 1031 / 5
        let names = |r: &[Ranked]| r.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&s.top_models_by_requests), ["small", "big"]);
        assert_eq!(names(&s.top_models_by_cost), ["big", "small"]);
        assert_eq!(names(&s.top_routes_by_requests), ["/a", "/b"]);
        assert_eq!(names(&s.top_routes_by_cost), ["/b", "/a"]);
        assert_eq!(s.top_models_by_requests[0].figures.requests, 4);
        // Breakdowns and token sums add up across windows like every other count.
        assert_eq!(
            s.totals.providers,
            BTreeMap::from([("anthropic".into(), 1), ("openai".into(), 4)])
        );
        assert_eq!(s.totals.errors, 2); // 21 ms (no type) and 70 ms (rate_limit)
        assert_eq!(
            s.totals.error_types,
            BTreeMap::from([("_OTHER".into(), 1), ("rate_limit".into(), 1)])
        );
        assert_eq!(s.totals.reasoning_tokens, 5);
        assert!(s.unpriced_models.is_empty());
    }

    #[test]
    fn a_summary_names_every_model_without_a_price() {
        let priced = window("/a", "gpt-4o", 0, &[10, 20]);
        let mut few = window("/a", "in-house", 1, &[5]);
        few.aggregate.unpriced = 1;
        let mut many = window("/b", "new-model", 2, &[5, 6, 7]);
        many.aggregate.unpriced = 3;
        let from = "2024-05-01T00:00:00Z".parse().unwrap();
        // Named however many there are, beyond the top-n of the other lists.
        let s = summarize(
            "t",
            from,
            from + TimeDelta::hours(1),
            vec![priced, few, many],
            1,
            None,
        )
        .unwrap();
        let unpriced: Vec<_> = s
            .unpriced_models
            .iter()
            .map(|r| (r.name.as_str(), r.figures.unpriced))
            .collect();
        assert_eq!(unpriced, [("new-model", 3), ("in-house", 1)]);
        assert_eq!(s.totals.unpriced, 4);
    }

    proptest! {
        /// Percentiles of a roll-up equal those of one histogram holding every value.
        #[test]
        fn rolled_up_percentiles_equal_one_histogram_of_all_values(
            values in prop::collection::vec((0i64..180, 1u64..120_000), 1..400),
            granularity in prop::sample::select(vec![Granularity::FiveMinutes, Granularity::Hour, Granularity::Day]),
        ) {
            let mut whole = histogram::new();
            let mut per_minute: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
            for &(minute, latency) in &values {
                // Keep everything in one bucket of the coarsest granularity tested here.
                let minute = minute % granularity.width().num_minutes().min(180);
                per_minute.entry(minute).or_default().push(latency);
                histogram::record(&mut whole, latency);
            }
            let windows: Vec<_> = per_minute.iter().map(|(m, ls)| window("/a", "m", *m, ls)).collect();
            let expected = LATENCY_QUANTILES.map(|q| whole.value_at_quantile(q));
            let stored: Vec<_> = windows.iter().map(Stored::of).collect();
            let merged = roll_up(windows, granularity, GroupBy::ALL, None).unwrap();
            let read = roll_up(stored, granularity, GroupBy::ALL, None).unwrap();
            for rolled in [merged, read] {
                prop_assert_eq!(rolled.len(), 1);
                let bucket = rolled.values().next().unwrap();
                prop_assert_eq!(bucket.latency, expected);
                prop_assert_eq!(bucket.aggregate.requests as usize, values.len());
            }
        }

        /// Buckets of one stored row, whose percentiles are read from its encoding, and
        /// buckets of several, in one roll-up: each has the percentiles of its own calls.
        #[test]
        fn each_bucket_has_the_percentiles_of_its_own_calls(
            windows in prop::collection::vec((0i64..600, prop::collection::vec(1u64..120_000, 0..40)), 1..30),
        ) {
            let mut per_bucket: BTreeMap<i64, histogram::Latencies> = BTreeMap::new();
            let mut rows = Vec::new();
            for (minute, latencies) in &windows {
                let h = per_bucket.entry(minute / 60).or_insert_with(histogram::new);
                for &l in latencies {
                    histogram::record(h, l);
                }
                rows.push(Stored::of(&window("/a", "m", *minute, latencies)));
            }
            let rolled = roll_up(rows, Granularity::Hour, GroupBy::ALL, None).unwrap();
            prop_assert_eq!(rolled.len(), per_bucket.len());
            for (bucket, h) in rolled.values().zip(per_bucket.values()) {
                let expected = if h.is_empty() {
                    [0; 4]
                } else {
                    LATENCY_QUANTILES.map(|q| h.value_at_quantile(q))
                };
                prop_assert_eq!(bucket.latency, expected);
                prop_assert_eq!(bucket.aggregate.completed, h.len());
            }
        }
    }

    /// A window as a stored row contributes it: everything added but the latency histogram,
    /// which is handed over encoded.
    #[derive(Debug, Clone)]
    struct Stored(Aggregate);

    impl Stored {
        fn of(w: &Window) -> Window<Stored> {
            Window {
                route: w.route.clone(),
                model: w.model.clone(),
                start: w.start,
                aggregate: Stored(w.aggregate.clone()),
            }
        }
    }

    impl Contribution for Stored {
        fn add_to(&self, a: &mut Aggregate) -> Result<(), RowError> {
            a.merge(&self.0);
            Ok(())
        }

        fn add_but_latency(&self, a: &mut Aggregate) -> Result<Option<Vec<u8>>, RowError> {
            let mut rest = self.0.clone();
            rest.latency = histogram::Lazy::growing();
            a.merge(&rest);
            Ok((!self.0.latency.is_empty()).then(|| histogram::encode(&self.0.latency)))
        }
    }
}
