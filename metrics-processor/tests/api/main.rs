//! The processor binary against a real broker and a real Postgres.

mod calls;
mod contract;
mod helpers;
mod processing;
mod restarts;
mod store;
