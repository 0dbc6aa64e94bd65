//! StreamLens query API: the per-minute windows the processor writes, served to dashboards.
//!
//! - [`query`]: the parameters, parsed and checked, every bad one named.
//! - [`rollup`]: merging windows into wider buckets, coarser groups and summaries.
//! - [`store`]: reading windows from Postgres.
//! - [`alerts`]: alert rules and their transitions; [`slos`]: objectives, budgets, burn rates.
//! - [`routes`]: the HTTP handlers; [`dashboard`]: the page at `/` that draws them; [`error`]: how failures become JSON answers.
//! - [`settings`], [`startup`], [`metrics`]: configuration, running, Prometheus metrics.

pub mod alerts;
pub mod dashboard;
pub mod error;
pub mod metrics;
pub mod query;
pub mod rollup;
pub mod routes;
pub mod settings;
pub mod slos;
pub mod startup;
pub mod store;
