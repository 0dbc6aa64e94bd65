//! The pure core every StreamLens service shares: no network, no database, no runtime.
//!
//! - [`events`]: the request and response events as they travel on the wire and on Kafka.
//! - [`ids`]: the names an event carries (request id, tenant, route, model), valid by type.
//! - [`validation`]: turning untrusted JSON into events, naming every field that is wrong.
//! - [`alerts`]: alert rules, checked, and their evaluation with hysteresis.
//! - [`slo`]: service level objectives, error budgets and burn-rate alerts.
//! - [`aggregate`]: the mergeable sums and histograms behind a window row.
//! - [`histogram`]: the one HdrHistogram configuration, so histograms merge exactly.
//! - [`pricing`]: the per-model price table and exact integer cost.
//! - [`error`]: the one JSON error shape both HTTP APIs answer with.
//! - [`settings`]: reading typed configuration from environment variables.
//! - [`tiles`]: which stored rows (minutes, five-minute, hourly and daily roll-ups) answer a time range.

pub mod aggregate;
pub mod alerts;
pub mod error;
pub mod events;
pub mod histogram;
pub mod ids;
pub mod pricing;
pub mod settings;
pub mod slo;
pub mod tiles;
pub mod validation;
