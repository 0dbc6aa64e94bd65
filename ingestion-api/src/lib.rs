//! StreamLens ingestion API.
//!
//! An LLM application posts a request event when it calls a model and a response event when
//! the call returns; this service validates each one and answers `202` only once the Kafka
//! broker has acknowledged the record.
//!
//! - [`settings`]: configuration from the environment.
//! - [`startup`]: binds, connects, builds the router, runs until told to stop.
//! - [`routes`]: the HTTP handlers (single events, batches, OpenTelemetry traces, health,
//!   metrics, OpenAPI).
//! - [`otlp`]: OTLP export requests decoded, and GenAI spans mapped to calls.
//! - [`publisher`]: the durable write to Kafka, behind a trait so handlers can be tested alone.
//! - [`producer`]: a librdkafka producer whose delivery reports are served on the runtime.
//! - [`limit`]: per-key rate limiting.
//! - [`error`]: how every failure becomes a status code and a JSON body.
//! - [`metrics`]: the Prometheus metrics this service exports.

pub mod error;
pub mod limit;
pub mod metrics;
pub mod otlp;
pub mod producer;
pub mod publisher;
pub mod routes;
pub mod settings;
pub mod startup;
