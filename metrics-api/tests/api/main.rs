//! The query API against real Postgres rows written by the real processor from a real broker.

mod alerts;
mod dashboard;
mod helpers;
mod isolation;
mod queries;
mod slos;
