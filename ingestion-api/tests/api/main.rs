//! Integration tests of the ingestion API: handlers driven in-process with a recording
//! publisher, and the whole service against a real Kafka-compatible broker.

mod auth;
mod broker;
mod handlers;
mod helpers;
mod traces;
