//! StreamLens metrics processor.
//!
//! Joins each request with its response, aggregates one-minute windows per tenant, route and
//! model, and writes them to Postgres together with the consumer positions that produced
//! them, then to `llm.metrics`.
//!
//! - [`domain`]: the pure core. Joining, event-time windows with watermarks, per-window
//!   aggregates with mergeable histograms, pricing, and the exactly-once rules of a replay.
//!   No I/O and no clock: time is always a parameter.
//! - [`driver`]: the commit protocol, once: claims, records, flushes, revocations, over any
//!   [`driver::PositionStore`]. The binary runs it on Postgres, the simulations in memory.
//! - [`pipeline`]: wires the driver to the rdkafka consumer loop and rebalance callbacks.
//! - [`reads`]: each input partition read without gaps from where it started, whatever the
//!   broker's fetches skip.
//! - [`store`]: Postgres: merged window rows, positions, decisions, in one transaction.
//! - [`watchdog`]: unread input partitions, a stuck pipeline, a changed input layout.
//! - [`output`]: the `llm.metrics` record.
//! - [`alerts`]: alert rules evaluated after each commit; transitions to `llm.alerts` and webhooks.
//! - [`settings`], [`startup`], [`metrics`]: configuration, wiring, Prometheus metrics.

pub mod alerts;
pub mod domain;
pub mod driver;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod reads;
pub mod settings;
pub mod startup;
pub mod store;
pub mod watchdog;
