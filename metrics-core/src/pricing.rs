//! What a model call costs.
//!
//! Prices are USD per million tokens for input, output and cached input, held as integer
//! micro-dollars per million tokens. A call's cost is `tokens × price` in pico-dollars, rounded
//! once to whole nano-dollars; windows add nano-dollars as integers, so sums never drift.
//!
//! Token accounting follows the OpenTelemetry GenAI convention: `prompt_tokens` includes the
//! cached ones, which are also reported on their own and priced at the cached rate.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
}

pub use crate::aggregate::Cost;

#[derive(Debug, Clone, PartialEq)]
pub struct PricingTable {
    models: BTreeMap<String, Price>,
    default: Price,
}

/// The file operators edit: USD per million tokens.
///
/// ```json
/// {"default": {"input": 0, "output": 0},
///  "models": {"gpt-4o": {"input": 2.5, "output": 10, "cached_input": 1.25}}}
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PricingFile {
    #[serde(default)]
    default: Option<PriceFile>,
    #[serde(default)]
    models: BTreeMap<String, PriceFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    input: f64,
    output: f64,
    /// Defaults to the input price when a provider has no cache discount.
    cached_input: Option<f64>,
}

/// List prices (USD per million tokens: input, output, cached input) of common models.
const DEFAULTS: &[(&str, f64, f64, f64)] = &[
    ("gpt-4o", 2.50, 10.00, 1.25),
    ("gpt-4o-mini", 0.15, 0.60, 0.075),
    ("gpt-4.1", 2.00, 8.00, 0.50),
    ("gpt-4.1-mini", 0.40, 1.60, 0.10),
    ("gpt-4.1-nano", 0.10, 0.40, 0.025),
    ("o3-mini", 1.10, 4.40, 0.55),
    ("claude-3-5-sonnet", 3.00, 15.00, 0.30),
    ("claude-3-7-sonnet", 3.00, 15.00, 0.30),
    ("claude-3-5-haiku", 0.80, 4.00, 0.08),
    ("claude-3-opus", 15.00, 75.00, 1.50),
    ("gemini-1.5-pro", 1.25, 5.00, 0.3125),
    ("gemini-1.5-flash", 0.075, 0.30, 0.01875),
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
        Ok(Price {
            input: micros(self.input, &format!("{what}.input"))?,
            output: micros(self.output, &format!("{what}.output"))?,
            cached_input: micros(
                self.cached_input.unwrap_or(self.input),
                &format!("{what}.cached_input"),
            )?,
        })
    }
}

impl Default for PricingTable {
    /// The built-in list prices; unknown models cost nothing and are counted as unpriced.
    fn default() -> Self {
        let models = DEFAULTS
            .iter()
            .map(|&(name, input, output, cached)| {
                let price = Price {
                    input: (input * 1e6).round() as u64,
                    output: (output * 1e6).round() as u64,
                    cached_input: (cached * 1e6).round() as u64,
                };
                (name.to_owned(), price)
            })
            .collect();
        Self {
            models,
            default: Price {
                input: 0,
                output: 0,
                cached_input: 0,
            },
        }
    }
}

impl PricingTable {
    /// The built-in prices, overridden and extended by a pricing file's JSON.
    pub fn with_file(json: &str) -> Result<Self, PricingError> {
        let file: PricingFile =
            serde_json::from_str(json).map_err(|e| PricingError::Invalid(e.to_string()))?;
        let mut table = Self::default();
        if let Some(default) = &file.default {
            table.default = default.price("default")?;
        }
        for (model, price) in &file.models {
            table.models.insert(model.clone(), price.price(model)?);
        }
        Ok(table)
    }

    /// The price of `model`: an exact entry, else the longest entry that `model` extends
    /// with a version suffix (`gpt-4o-2024-08-06` is priced as `gpt-4o`), else `None`.
    pub fn price(&self, model: &str) -> Option<Price> {
        if let Some(price) = self.models.get(model) {
            return Some(*price);
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
            .map(|(_, price)| *price)
    }

    /// The cost of one call.
    pub fn cost(
        &self,
        model: &str,
        prompt_tokens: u64,
        cached_prompt_tokens: u64,
        completion_tokens: u64,
    ) -> Cost {
        let (price, priced) = match self.price(model) {
            Some(price) => (price, true),
            None => (self.default, false),
        };
        let cached = cached_prompt_tokens.min(prompt_tokens);
        let uncached = prompt_tokens - cached;
        let pico = u128::from(uncached) * u128::from(price.input)
            + u128::from(cached) * u128::from(price.cached_input)
            + u128::from(completion_tokens) * u128::from(price.output);
        let nanos = (pico + 500) / 1000;
        Cost {
            nanos: u64::try_from(nanos).unwrap_or(u64::MAX),
            priced,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    #[error("invalid pricing file: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_exact_in_nano_dollars() {
        let table = PricingTable::default();
        // gpt-4o: 1000 input at $2.50/M = $0.0025; 500 output at $10/M = $0.005.
        let cost = table.cost("gpt-4o", 1000, 0, 500);
        assert_eq!(
            cost,
            Cost {
                nanos: 7_500_000,
                priced: true
            }
        );
    }

    #[test]
    fn cached_prompt_tokens_are_part_of_the_prompt_and_priced_at_the_cached_rate() {
        let table = PricingTable::default();
        // 1000 prompt tokens of which 400 cached: 600 × 2.50 + 400 × 1.25 per million.
        let cost = table.cost("gpt-4o", 1000, 400, 0);
        assert_eq!(cost.nanos, 600 * 2_500 + 400 * 1_250);
        // More cached than prompt tokens cannot make the cost negative or larger.
        assert_eq!(table.cost("gpt-4o", 100, 500, 0).nanos, 100 * 1_250);
    }

    #[test]
    fn sums_of_many_small_costs_do_not_drift() {
        let table = PricingTable::default();
        // 3 × $0.15/M + 1 × $0.60/M = 450 + 600 nano-dollars.
        let one = table.cost("gpt-4o-mini", 3, 0, 1).nanos;
        assert_eq!(one, 1_050);
        let total: u64 = (0..1_000_000)
            .map(|_| table.cost("gpt-4o-mini", 3, 0, 1).nanos)
            .sum();
        assert_eq!(total, 1_000_000 * one);
    }

    #[test]
    fn versioned_model_names_take_the_price_of_their_family() {
        let table = PricingTable::default();
        assert_eq!(table.price("gpt-4o-2024-08-06"), table.price("gpt-4o"));
        assert_eq!(
            table.price("gpt-4o-mini-2024-07-18"),
            table.price("gpt-4o-mini")
        );
        assert_eq!(
            table.price("claude-3-5-sonnet-20241022"),
            table.price("claude-3-5-sonnet")
        );
        assert_eq!(
            table.price("gpt-4"),
            None,
            "a shorter name is not a version of a longer one"
        );
        assert_eq!(
            table.price("gpt-4omega"),
            None,
            "a suffix must start with a separator"
        );
    }

    #[test]
    fn unknown_models_use_the_default_and_are_marked_unpriced() {
        let table = PricingTable::with_file(r#"{"default": {"input": 1, "output": 2}}"#).unwrap();
        let cost = table.cost("in-house-7b", 1_000_000, 0, 1_000_000);
        assert_eq!(
            cost,
            Cost {
                nanos: 3_000_000_000,
                priced: false
            }
        );
    }

    #[test]
    fn a_pricing_file_overrides_and_extends_the_defaults() {
        let json = r#"{"models": {"gpt-4o": {"input": 5, "output": 15}, "in-house-7b": {"input": 0.1, "output": 0.2, "cached_input": 0.05}}}"#;
        let table = PricingTable::with_file(json).unwrap();
        assert_eq!(
            table.price("gpt-4o"),
            Some(Price {
                input: 5_000_000,
                output: 15_000_000,
                cached_input: 5_000_000
            })
        );
        assert_eq!(
            table.price("in-house-7b"),
            Some(Price {
                input: 100_000,
                output: 200_000,
                cached_input: 50_000
            })
        );
        assert!(table.price("gpt-4o-mini").is_some(), "other defaults stay");
    }

    #[test]
    fn bad_pricing_files_are_refused_with_the_reason() {
        for bad in [
            r#"{"models": {"m": {"input": -1, "output": 1}}}"#,
            r#"{"models": {"m": {"input": 1}}}"#,
            r#"{"modles": {}}"#,
            "not json",
        ] {
            assert!(PricingTable::with_file(bad).is_err(), "{bad}");
        }
    }
}
