//! What a model call costs.
//!
//! Prices are USD per million tokens of each type (input, cached input read, cache write,
//! output, reasoning), held as integer micro-dollars per million tokens. A call's cost is
//! `tokens × price` in pico-dollars per type, rounded once to whole nano-dollars; windows add
//! nano-dollars as integers, so sums never drift.
//!
//! Token accounting follows the OpenTelemetry GenAI convention: `prompt_tokens` includes the
//! cached ones and the ones written to the cache, which are also reported on their own and
//! priced at their own rates (never also as input); `completion_tokens` includes the reasoning
//! ones, priced at the reasoning rate (by default the output rate).
//!
//! A model may have several prices, each from a `valid_from` on (minute-aligned, so a change
//! at 12:00 applies from the 12:00 window on): a call is priced at the price in force at its
//! request's time.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::events::ResponseEvent;

/// Micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub cache_write: u64,
    pub reasoning: u64,
}

impl Price {
    /// Input and output prices; cached reads and cache writes at the input price, reasoning at
    /// the output price.
    pub const fn flat(input: u64, output: u64) -> Self {
        Self {
            input,
            output,
            cached_input: input,
            cache_write: input,
            reasoning: output,
        }
    }

    const FREE: Price = Price::flat(0, 0);
}

/// The tokens of one call by type. `cached` and `cache_write` are parts of `prompt`,
/// `reasoning` a part of `completion`; parts larger than their whole are capped at it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub cached: u64,
    pub cache_write: u64,
    pub completion: u64,
    pub reasoning: u64,
}

impl Tokens {
    /// A call's tokens: the prompt its request reported, the rest as its response reported them.
    pub fn of(prompt: u64, response: &ResponseEvent) -> Self {
        Self {
            prompt,
            cached: response.cached_prompt_tokens.unwrap_or(0),
            cache_write: response.cache_creation_tokens.unwrap_or(0),
            completion: response.completion_tokens,
            reasoning: response.reasoning_tokens.unwrap_or(0),
        }
    }

    /// Every part at most its whole: cache reads at most the prompt, cache writes at most what
    /// the reads leave of it, reasoning at most the completion. What is priced and what a
    /// window sums.
    pub fn capped(self) -> Self {
        let cached = self.cached.min(self.prompt);
        Self {
            cached,
            cache_write: self.cache_write.min(self.prompt - cached),
            reasoning: self.reasoning.min(self.completion),
            ..self
        }
    }
}

pub use crate::aggregate::Cost;

/// A window's cost as [`PricingTable::window_cost`] computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCost {
    pub cost: Cost,
    /// Completed calls without a price.
    pub unpriced: u64,
    /// Their prompt and completion tokens.
    pub unpriced_tokens: u64,
}

/// A price and the time it applies from (`None`: from always).
#[derive(Debug, Clone, PartialEq)]
struct Dated {
    from: Option<DateTime<Utc>>,
    price: Price,
    /// Who sells at this price (`openai`, `anthropic`, `aws.bedrock`): shown, not matched,
    /// since a window's calls of one model may come through several providers.
    provider: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PricingTable {
    /// Per model, its prices oldest first.
    models: BTreeMap<String, Vec<Dated>>,
    default: Price,
}

/// The file operators edit: USD per million tokens, one price per model or a list of dated
/// ones.
///
/// ```json
/// {"default": {"input": 0, "output": 0},
///  "models": {"gpt-4o": {"input": 2.5, "output": 10, "cached_input": 1.25},
///             "claude-sonnet-4": [
///               {"input": 3, "output": 15, "cached_input": 0.3, "cache_write": 3.75},
///               {"valid_from": "2026-07-01T00:00:00Z", "input": 2.5, "output": 12.5}]}}
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PricingFile {
    #[serde(default)]
    default: Option<PriceFile>,
    #[serde(default)]
    models: BTreeMap<String, OneOrDated>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrDated {
    One(PriceFile),
    Dated(Vec<PriceFile>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    /// RFC 3339, on a whole minute; absent: from always.
    #[serde(default)]
    valid_from: Option<DateTime<Utc>>,
    /// Who sells the model at this price, as `gen_ai.provider.name` names it.
    #[serde(default)]
    provider: Option<String>,
    input: f64,
    output: f64,
    /// Defaults to the input price when a provider has no cache discount.
    cached_input: Option<f64>,
    /// Defaults to the input price (providers that do not charge for cache writes).
    cache_write: Option<f64>,
    /// Defaults to the output price, as providers bill reasoning tokens.
    reasoning: Option<f64>,
}

/// List prices (USD per million tokens: input, output, cached input read, cache write) of
/// common models, from the providers' price pages; reasoning tokens at the output price.
/// OpenAI and Google do not charge cache writes (the input price); Anthropic charges 1.25 x
/// input for its 5-minute cache.
const DEFAULTS: &[(&str, &str, f64, f64, f64, f64)] = &[
    ("gpt-4o", "openai", 2.50, 10.00, 1.25, 2.50),
    ("gpt-4o-mini", "openai", 0.15, 0.60, 0.075, 0.15),
    ("gpt-4.1", "openai", 2.00, 8.00, 0.50, 2.00),
    ("gpt-4.1-mini", "openai", 0.40, 1.60, 0.10, 0.40),
    ("gpt-4.1-nano", "openai", 0.10, 0.40, 0.025, 0.10),
    ("o3-mini", "openai", 1.10, 4.40, 0.55, 1.10),
    ("claude-3-5-sonnet", "anthropic", 3.00, 15.00, 0.30, 3.75),
    ("claude-3-7-sonnet", "anthropic", 3.00, 15.00, 0.30, 3.75),
    ("claude-3-5-haiku", "anthropic", 0.80, 4.00, 0.08, 1.00),
    ("claude-3-opus", "anthropic", 15.00, 75.00, 1.50, 18.75),
    ("gemini-1.5-pro", "gcp.gemini", 1.25, 5.00, 0.3125, 1.25),
    (
        "gemini-1.5-flash",
        "gcp.gemini",
        0.075,
        0.30,
        0.01875,
        0.075,
    ),
];

fn micros(usd_per_million: f64, what: &str) -> Result<u64, PricingError> {
    if !(0.0..=1e6).contains(&usd_per_million) {
        return Err(PricingError::Invalid(format!(
            "{what}: {usd_per_million} is not a price between 0 and 1000000 USD per million tokens"
        )));
    }
    Ok((usd_per_million * 1e6).round() as u64)
}

impl PriceFile {
    fn price(&self, what: &str) -> Result<Price, PricingError> {
        let field = |name: &str| format!("{what}.{name}");
        let input = micros(self.input, &field("input"))?;
        let output = micros(self.output, &field("output"))?;
        let or = |given: Option<f64>, name: &str, fallback: u64| {
            given.map_or(Ok(fallback), |usd| micros(usd, &field(name)))
        };
        Ok(Price {
            input,
            output,
            cached_input: or(self.cached_input, "cached_input", input)?,
            cache_write: or(self.cache_write, "cache_write", input)?,
            reasoning: or(self.reasoning, "reasoning", output)?,
        })
    }

    fn dated(&self, what: &str) -> Result<Dated, PricingError> {
        if let Some(from) = self.valid_from {
            if from.timestamp().rem_euclid(60) != 0 || from.timestamp_subsec_nanos() != 0 {
                return Err(PricingError::Invalid(format!(
                    "{what}.valid_from: {from} is not on a whole minute (prices change between windows)"
                )));
            }
        }
        Ok(Dated {
            from: self.valid_from,
            price: self.price(what)?,
            provider: self.provider.clone(),
        })
    }
}

impl OneOrDated {
    /// The model's prices, oldest first; at most one without a `valid_from`, no two from the
    /// same time.
    fn prices(&self, model: &str) -> Result<Vec<Dated>, PricingError> {
        let mut prices = match self {
            OneOrDated::One(p) => vec![p.dated(model)?],
            OneOrDated::Dated(list) => list
                .iter()
                .enumerate()
                .map(|(i, p)| p.dated(&format!("{model}[{i}]")))
                .collect::<Result<_, _>>()?,
        };
        if prices.is_empty() {
            return Err(PricingError::Invalid(format!("{model}: no price given")));
        }
        prices.sort_by_key(|d| d.from);
        if prices.windows(2).any(|w| w[0].from == w[1].from) {
            return Err(PricingError::Invalid(format!(
                "{model}: two prices from the same time"
            )));
        }
        Ok(prices)
    }
}

impl Default for PricingTable {
    /// The built-in list prices; unknown models cost nothing and are counted as unpriced.
    fn default() -> Self {
        let usd = |v: f64| (v * 1e6).round() as u64;
        let models = DEFAULTS
            .iter()
            .map(|&(name, provider, input, output, cached, write)| {
                let price = Price {
                    cached_input: usd(cached),
                    cache_write: usd(write),
                    ..Price::flat(usd(input), usd(output))
                };
                let dated = Dated {
                    from: None,
                    price,
                    provider: Some(provider.to_owned()),
                };
                (name.to_owned(), vec![dated])
            })
            .collect();
        Self {
            models,
            default: Price::FREE,
        }
    }
}

impl PricingTable {
    /// The built-in prices, overridden and extended by a pricing file's JSON: a model the
    /// file names takes the file's prices (all of them) instead of the built-in one.
    pub fn with_file(json: &str) -> Result<Self, PricingError> {
        let file: PricingFile =
            serde_json::from_str(json).map_err(|e| PricingError::Invalid(e.to_string()))?;
        let mut table = Self::default();
        if let Some(default) = &file.default {
            table.default = default.price("default")?;
        }
        for (model, prices) in &file.models {
            table.models.insert(model.clone(), prices.prices(model)?);
        }
        Ok(table)
    }

    /// The entry pricing `model`, by name: an exact entry, else the longest entry that `model`
    /// extends with a version suffix (`gpt-4o-2024-08-06` is priced as `gpt-4o`).
    fn entry<'a>(&'a self, model: &'a str) -> Option<(&'a str, &'a [Dated])> {
        if let Some(prices) = self.models.get(model) {
            return Some((model, prices));
        }
        self.models
            .iter()
            .filter(|(name, _)| {
                model.starts_with(name.as_str())
                    && matches!(
                        model.as_bytes().get(name.len()),
                        Some(b'-' | b'@' | b':' | b'.')
                    )
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(name, prices)| (name.as_str(), prices.as_slice()))
    }

    /// The entry that prices `model` (its own name, or the family it is a version of), if any.
    pub fn priced_as<'a>(&'a self, model: &'a str) -> Option<&'a str> {
        self.entry(model).map(|(name, _)| name)
    }

    /// Who sells `model` at its newest price that names one.
    pub fn provider<'a>(&'a self, model: &'a str) -> Option<&'a str> {
        self.entry(model)?
            .1
            .iter()
            .rev()
            .find_map(|d| d.provider.as_deref())
    }

    /// The price of `model` in force at `at`, if it has one then.
    pub fn price(&self, model: &str, at: DateTime<Utc>) -> Option<Price> {
        self.entry(model)?
            .1
            .iter()
            .rev()
            .find(|d| d.from.is_none_or(|from| from <= at))
            .map(|d| d.price)
    }

    /// The cost of one call of `model` made at `at`: each token type at its own rate, at the
    /// prices in force then. A model without a price then is costed at the default price and
    /// marked unpriced.
    pub fn cost(&self, model: &str, at: DateTime<Utc>, tokens: Tokens) -> Cost {
        let (price, priced) = match self.price(model, at) {
            Some(price) => (price, true),
            None => (self.default, false),
        };
        let Tokens {
            prompt,
            cached,
            cache_write: written,
            completion,
            reasoning,
        } = tokens.capped();
        let uncached = prompt - cached - written;
        let output = completion - reasoning;
        // Each type rounded once to whole nano-dollars; the whole is the sum of the parts, so
        // the parts always add up to it.
        let parts = [
            (uncached, price.input),
            (cached, price.cached_input),
            (written, price.cache_write),
            (output, price.output),
            (reasoning, price.reasoning),
        ]
        .map(|(n, p)| {
            let nanos = (u128::from(n) * u128::from(p) + 500) / 1000;
            u64::try_from(nanos).unwrap_or(u64::MAX)
        });
        Cost { priced, parts }
    }
}

impl PricingTable {
    /// A window's cost from its token sums at the prices for `model` in force at `at`, and
    /// what of its `completed` calls that leaves unpriced. A window holds one model's calls of
    /// one minute, and prices change on whole minutes, so all its calls had one price: all or
    /// none of them are unpriced. Each type is rounded once for the window where counting
    /// rounds once a call; with prices in whole nano-dollars a token (any price in steps of
    /// $0.001 a million) the two agree exactly.
    pub fn window_cost(
        &self,
        model: &str,
        at: DateTime<Utc>,
        tokens: Tokens,
        completed: u64,
    ) -> WindowCost {
        let cost = self.cost(model, at, tokens);
        let (unpriced, unpriced_tokens) = if cost.priced {
            (0, 0)
        } else {
            (completed, tokens.prompt.saturating_add(tokens.completion))
        };
        WindowCost {
            cost,
            unpriced,
            unpriced_tokens,
        }
    }

    /// Reads the operator's pricing file over the built-in prices; without one, the
    /// built-in prices.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, PricingError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| PricingError::Invalid(format!("cannot read {}: {e}", path.display())))?;
        Self::with_file(&text)
            .map_err(|e| PricingError::Invalid(format!("{}: {e}", path.display())))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    #[error("invalid pricing file: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn now() -> DateTime<Utc> {
        at("2026-06-01T12:00:00Z")
    }

    fn plain(prompt: u64, completion: u64) -> Tokens {
        Tokens {
            prompt,
            completion,
            ..Tokens::default()
        }
    }

    #[test]
    fn cost_is_exact_in_nano_dollars() {
        let table = PricingTable::default();
        // gpt-4o: 1000 input at $2.50/M = $0.0025; 500 output at $10/M = $0.005.
        let cost = table.cost("gpt-4o", now(), plain(1000, 500));
        assert_eq!(cost.nanos(), 7_500_000);
        assert_eq!(
            cost,
            Cost {
                priced: true,
                parts: [2_500_000, 0, 0, 5_000_000, 0],
            }
        );
    }

    #[test]
    fn each_token_type_is_priced_at_its_own_rate_and_never_twice() {
        let table = PricingTable::default();
        // claude-3-5-sonnet: input 3, cached read 0.30, cache write 3.75, output 15 (and
        // reasoning at 15) USD per million. 1000 prompt tokens: 400 read from the cache, 100
        // written to it, 500 plain; 300 completion tokens of which 120 reasoning.
        let tokens = Tokens {
            prompt: 1000,
            cached: 400,
            cache_write: 100,
            completion: 300,
            reasoning: 120,
        };
        let cost = table.cost("claude-3-5-sonnet", now(), tokens);
        let parts = [
            500 * 3_000_000,
            400 * 300_000,
            100 * 3_750_000,
            180 * 15_000_000,
            120 * 15_000_000,
        ]
        .map(|pico: u64| pico / 1000);
        assert_eq!(cost.parts, parts);
        assert_eq!(cost.nanos(), parts.iter().sum::<u64>());
        // Parts larger than their whole are capped: cached reads first, then writes.
        let over = Tokens {
            prompt: 100,
            cached: 80,
            cache_write: 500,
            completion: 10,
            reasoning: 50,
        };
        let cost = table.cost("claude-3-5-sonnet", now(), over);
        assert_eq!(
            cost.nanos(),
            (80 * 300_000 + 20 * 3_750_000 + 10 * 15_000_000) / 1000
        );
    }

    #[test]
    fn reasoning_tokens_take_their_own_price_when_given() {
        let json = r#"{"models": {"thinker": {"input": 1, "output": 4, "reasoning": 8}}}"#;
        let table = PricingTable::with_file(json).unwrap();
        let tokens = Tokens {
            completion: 1_000_000,
            reasoning: 250_000,
            ..Tokens::default()
        };
        // 750,000 output at $4/M + 250,000 reasoning at $8/M = $3 + $2.
        assert_eq!(table.cost("thinker", now(), tokens).nanos(), 5_000_000_000);
    }

    #[test]
    fn sums_of_many_small_costs_do_not_drift() {
        let table = PricingTable::default();
        // 3 × $0.15/M + 1 × $0.60/M = 450 + 600 nano-dollars.
        let one = table.cost("gpt-4o-mini", now(), plain(3, 1)).nanos();
        assert_eq!(one, 1_050);
        let total: u64 = (0..1_000_000)
            .map(|_| table.cost("gpt-4o-mini", now(), plain(3, 1)).nanos())
            .sum();
        assert_eq!(total, 1_000_000 * one);
    }

    #[test]
    fn versioned_model_names_take_the_price_of_their_family() {
        let table = PricingTable::default();
        let price = |m: &str| table.price(m, now());
        assert_eq!(price("gpt-4o-2024-08-06"), price("gpt-4o"));
        assert_eq!(price("gpt-4o-mini-2024-07-18"), price("gpt-4o-mini"));
        assert_eq!(
            price("claude-3-5-sonnet-20241022"),
            price("claude-3-5-sonnet")
        );
        assert_eq!(
            price("gpt-4"),
            None,
            "a shorter name is not a version of a longer one"
        );
        assert_eq!(
            price("gpt-4omega"),
            None,
            "a suffix must start with a separator"
        );
        assert_eq!(
            table.provider("claude-3-5-haiku-20241022"),
            Some("anthropic")
        );
        let file = PricingTable::with_file(
            r#"{"models": {"m": [{"input": 1, "output": 1, "provider": "azure.ai.openai"},
                                 {"valid_from": "2026-01-01T00:00:00Z", "input": 1, "output": 2}]}}"#,
        )
        .unwrap();
        assert_eq!(file.provider("m"), Some("azure.ai.openai"));
        assert_eq!(file.provider("n"), None);
    }

    #[test]
    fn unknown_models_use_the_default_and_are_marked_unpriced() {
        let table = PricingTable::with_file(r#"{"default": {"input": 1, "output": 2}}"#).unwrap();
        let cost = table.cost("in-house-7b", now(), plain(1_000_000, 1_000_000));
        assert_eq!(cost.nanos(), 3_000_000_000);
        assert_eq!(
            cost,
            Cost {
                priced: false,
                parts: [1_000_000_000, 0, 0, 2_000_000_000, 0],
            }
        );
    }

    #[test]
    fn a_price_change_applies_from_its_minute_on_and_not_before() {
        let json = r#"{"models": {"m": [
            {"valid_from": "2026-06-01T12:00:00Z", "input": 2, "output": 0},
            {"input": 1, "output": 0},
            {"valid_from": "2026-06-02T00:00:00Z", "input": 3, "output": 0}]}}"#;
        let table = PricingTable::with_file(json).unwrap();
        let input = |t: &str| table.price("m", at(t)).unwrap().input;
        assert_eq!(input("2020-01-01T00:00:00Z"), 1_000_000);
        assert_eq!(input("2026-06-01T11:59:59.999Z"), 1_000_000);
        assert_eq!(input("2026-06-01T12:00:00Z"), 2_000_000);
        assert_eq!(input("2026-06-01T23:59:59Z"), 2_000_000);
        assert_eq!(input("2026-06-02T00:00:00Z"), 3_000_000);
        // Before a model's first dated price it has none: unpriced, never free.
        let later = r#"{"models": {"new": [{"valid_from": "2026-06-01T00:00:00Z", "input": 1, "output": 1}]}}"#;
        let table = PricingTable::with_file(later).unwrap();
        assert!(
            !table
                .cost("new", at("2026-05-31T23:59:00Z"), plain(1, 1))
                .priced
        );
        assert!(
            table
                .cost("new", at("2026-06-01T00:00:00Z"), plain(1, 1))
                .priced
        );
    }

    /// One day of one tenant's traffic with known token counts, against an invoice computed by
    /// hand from the provider's price list, with a price cut at noon.
    #[test]
    fn a_day_of_calls_adds_up_to_the_hand_computed_invoice() {
        let json = r#"{"models": {"claude-x": [
            {"input": 3, "output": 15, "cached_input": 0.3, "cache_write": 3.75},
            {"valid_from": "2026-06-01T12:00:00Z", "input": 2, "output": 10, "cached_input": 0.2, "cache_write": 2.5}]}}"#;
        let table = PricingTable::with_file(json).unwrap();
        let mut nanos = 0u64;
        // One call a minute for 24 hours: 2,000 prompt tokens (500 cache reads, 200 cache
        // writes), 400 completion tokens (100 reasoning).
        for minute in 0..24 * 60 {
            let t = at("2026-06-01T00:00:00Z") + TimeDelta::minutes(minute);
            let tokens = Tokens {
                prompt: 2_000,
                cached: 500,
                cache_write: 200,
                completion: 400,
                reasoning: 100,
            };
            let cost = table.cost("claude-x", t, tokens);
            assert!(cost.priced);
            nanos += cost.nanos();
        }
        // By hand, per half day of 720 calls: 720 × (1,300 input, 500 read, 200 written,
        // 400 output incl. reasoning) = 936,000 input, 360,000 read, 144,000 written, 288,000
        // output tokens.
        // Morning: 0.936 × $3 + 0.36 × $0.30 + 0.144 × $3.75 + 0.288 × $15
        //        = 2.808 + 0.108 + 0.54 + 4.32 = $7.776
        // Afternoon: 0.936 × $2 + 0.36 × $0.20 + 0.144 × $2.50 + 0.288 × $10
        //          = 1.872 + 0.072 + 0.36 + 2.88 = $5.184
        assert_eq!(nanos, 12_960_000_000, "$7.776 + $5.184 = $12.96");
    }

    #[test]
    fn a_pricing_file_overrides_and_extends_the_defaults() {
        let json = r#"{"models": {"gpt-4o": {"input": 5, "output": 15}, "in-house-7b": {"input": 0.1, "output": 0.2, "cached_input": 0.05}}}"#;
        let table = PricingTable::with_file(json).unwrap();
        assert_eq!(
            table.price("gpt-4o", now()),
            Some(Price::flat(5_000_000, 15_000_000))
        );
        assert_eq!(
            table.price("in-house-7b", now()),
            Some(Price {
                cached_input: 50_000,
                ..Price::flat(100_000, 200_000)
            })
        );
        assert!(
            table.price("gpt-4o-mini", now()).is_some(),
            "other defaults stay"
        );
    }

    #[test]
    fn bad_pricing_files_are_refused_with_the_reason() {
        for (bad, why) in [
            (
                r#"{"models": {"m": {"input": -1, "output": 1}}}"#,
                "m.input",
            ),
            (r#"{"models": {"m": {"input": 1}}}"#, ""),
            (r#"{"modles": {}}"#, ""),
            ("not json", ""),
            (r#"{"models": {"m": []}}"#, "no price"),
            (
                r#"{"models": {"m": [{"valid_from": "2026-06-01T12:00:30Z", "input": 1, "output": 1}]}}"#,
                "whole minute",
            ),
            (
                r#"{"models": {"m": [{"input": 1, "output": 1}, {"input": 2, "output": 2}]}}"#,
                "same time",
            ),
            (
                r#"{"models": {"m": {"input": 1, "output": 1, "cache_write": -3}}}"#,
                "m.cache_write",
            ),
        ] {
            let error = PricingTable::with_file(bad).expect_err(bad).to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}
