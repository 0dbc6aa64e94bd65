//! What every StreamLens service needs to talk to the world; the pure parts live in
//! `metrics-core`.
//!
//! - [`kafka`]: client configuration (TLS, SASL), producer guarantees, topic names and
//!   creation, the Java-compatible partitioner.
//! - [`alerts`]: alert rules, their evaluation on written windows, transitions and delivery.
//! - [`slos`]: service level objectives, their budgets, burn rates and burn-rate alerts.
//! - [`db`]: the Postgres pool, the embedded migrations, window rows read back.
//! - [`rollups`]: five-minute, hourly and daily roll-ups of the minute windows, kept, rebuilt, complete.
//! - [`reprice`]: stored windows and their roll-ups costed anew under the current prices.
//! - [`keys`]: API keys bound to tenants, stored hashed, and the lookup services use.
//! - [`http`]: serving, request ids, request counting and timeouts, Prometheus answers.
//! - [`openapi`]: what both services' generated OpenAPI documents share.
//! - [`logging`] and [`shutdown`]: logs and the stop signal.

pub mod alerts;
pub mod db;
pub mod http;
pub mod kafka;
pub mod keys;
pub mod logging;
pub mod openapi;
pub mod reprice;
pub mod rollups;
pub mod shutdown;
pub mod slos;
