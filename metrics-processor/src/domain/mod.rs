//! The processor's pure core: everything that decides a number, tested without a broker or
//! a database. The async shell around it feeds it records and writes what it returns.
//!
//! - [`join`]: pairs each request with its response by `request_id`, in either order, with an
//!   event-time TTL and duplicate suppression.
//! - [`window`]: one-minute tumbling windows per (tenant, route, model) and their aggregates.
//! - [`watermark`]: event-time progress per partition, the minimum across partitions.
//! - [`engine`]: the state of the owned partitions and the exactly-once rules of a replay.
//! - [`coverage`]: which input partitions nobody in the group reads.
//! - [`intake`]: what is taken from the raw topics and what goes to the dead-letter topic.
//! - [`offsets`]: which input offsets are still needed, i.e. where a restart must resume.

pub mod coverage;
pub mod engine;
pub mod intake;
pub use metrics_core::histogram;
pub mod join;
pub mod offsets;
pub mod watermark;
pub mod window;
