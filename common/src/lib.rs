//! What every StreamLens service shares.
//!
//! - [`events`]: the request and response events as they travel on the wire and on Kafka.
//! - [`validation`]: turning untrusted JSON into events, naming every field that is wrong.
//! - [`error`]: the one JSON error shape both HTTP APIs answer with.
//! - [`settings`]: reading typed configuration from environment variables.
//! - [`kafka`]: producer configuration, topic names and creation, the Java-compatible partitioner.
//! - [`aggregate`]: the mergeable sums and histograms behind a window row.
//! - [`histogram`]: the one HdrHistogram configuration, so histograms merge exactly.
//! - [`http`]: request counting and timeouts, and Prometheus answers, for every HTTP surface.
//! - [`openapi`]: what both services' generated OpenAPI documents share.
//! - [`keys`]: API keys bound to tenants, stored hashed, and the lookup services use.
//! - [`db`]: the Postgres pool and the embedded migrations.
//! - [`telemetry`] and [`shutdown`]: logs and the stop signal.

pub mod aggregate;
pub mod db;
pub mod error;
pub mod events;
pub mod histogram;
pub mod http;
pub mod kafka;
pub mod keys;
pub mod openapi;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod validation;
