//! Typed configuration from environment variables.
//!
//! Every service loads its settings once in `main` through [`Env`], which reads from a lookup
//! function rather than the process environment directly, so tests pass a map and never race
//! on globals. Errors are collected and reported together: an operator fixes them all in one go.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;

type Lookup = Box<dyn Fn(&str) -> Option<String>>;

/// Reads settings, remembering every variable that failed to parse.
pub struct Env {
    lookup: Lookup,
    errors: Vec<String>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env").field("errors", &self.errors).finish()
    }
}

impl Env {
    /// The process environment.
    pub fn process() -> Self {
        Self::from_fn(|name| std::env::var(name).ok())
    }

    /// A fixed map, for tests.
    pub fn from_map(map: HashMap<String, String>) -> Self {
        Self::from_fn(move |name| map.get(name).cloned())
    }

    /// Name and value pairs, for tests.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self::from_map(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    pub fn from_fn(lookup: impl Fn(&str) -> Option<String> + 'static) -> Self {
        Self {
            lookup: Box::new(lookup),
            errors: Vec::new(),
        }
    }

    /// The first of `names` that is set and not blank. Later names are older aliases kept for
    /// compatibility (e.g. `DATABASE_URL` beside `POSTGRES_DSN`).
    pub fn raw(&self, names: &[&str]) -> Option<(String, String)> {
        names.iter().find_map(|name| {
            (self.lookup)(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .map(|v| ((*name).to_owned(), v))
        })
    }

    pub fn string(&mut self, names: &[&str], default: &str) -> String {
        self.raw(names)
            .map_or_else(|| default.to_owned(), |(_, value)| value)
    }

    /// A value parsed with `FromStr`, or `default` when unset.
    pub fn parse<T>(&mut self, names: &[&str], default: T) -> T
    where
        T: FromStr,
        T::Err: Display,
    {
        let Some((name, value)) = self.raw(names) else {
            return default;
        };
        match value.parse() {
            Ok(parsed) => parsed,
            Err(e) => {
                self.errors.push(format!("{name}={value:?}: {e}"));
                default
            }
        }
    }

    /// Records a problem found while checking values against each other.
    /// `LOG_FORMAT`: `text` (the default) or `json`; true for JSON lines.
    pub fn log_json(&mut self) -> bool {
        let format = self.string(&["LOG_FORMAT"], "text");
        if !matches!(format.as_str(), "text" | "json") {
            self.invalid("LOG_FORMAT must be \"text\" or \"json\"");
        }
        format == "json"
    }

    pub fn invalid(&mut self, problem: impl Into<String>) {
        self.errors.push(problem.into());
    }

    /// Fails with every problem found, one per line.
    pub fn finish(self) -> Result<(), SettingsError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(SettingsError(self.errors))
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct SettingsError(pub Vec<String>);

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_map(
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        )
    }

    #[test]
    fn the_first_set_name_wins_and_blank_means_unset() {
        let mut e = env(&[("NEW", " "), ("OLD", "kafka:9092")]);
        assert_eq!(e.string(&["NEW", "OLD"], "x"), "kafka:9092");
        assert_eq!(e.string(&["MISSING"], "fallback"), "fallback");
    }

    #[test]
    fn every_bad_value_is_reported_together() {
        let mut e = env(&[("PORT", "eighty"), ("LIMIT", "-1")]);
        let _: u16 = e.parse(&["PORT"], 8080);
        let _: u32 = e.parse(&["LIMIT"], 10);
        let message = e.finish().unwrap_err().to_string();
        assert!(message.contains("PORT=\"eighty\""), "{message}");
        assert!(message.contains("LIMIT=\"-1\""), "{message}");
    }

    #[test]
    fn the_log_format_is_text_or_json() {
        assert!(!env(&[]).log_json());
        assert!(env(&[("LOG_FORMAT", "json")]).log_json());
        let mut e = env(&[("LOG_FORMAT", "xml")]);
        e.log_json();
        assert!(e.finish().unwrap_err().to_string().contains("LOG_FORMAT"));
    }
}
