//! A window row as `llm.metrics` carries it: the full row for one (key, window_start), so a
//! record delivered twice is harmless.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use metrics_core::aggregate::TOKEN_TYPES;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::Row;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricRow {
    pub tenant_id: String,
    pub route: String,
    pub model: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub requests: i64,
    pub errors: i64,
    pub timeouts: i64,
    pub avg_latency_ms: f64,
    pub p50_latency_ms: f64,
    pub p95_latency_ms: f64,
    pub p99_latency_ms: f64,
    pub max_latency_ms: f64,
    pub avg_ttft_ms: Option<f64>,
    pub avg_prompt_tokens: f64,
    pub avg_completion_tokens: f64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_prompt_tokens: i64,
    pub cache_creation_tokens: i64,
    pub reasoning_tokens: i64,
    pub total_tokens: i64,
    pub estimated_cost_usd: f64,
    pub cost_nanos: i64,
    /// `cost_nanos` by token type: `input`, `cached_input`, `cache_write`, `output`,
    /// `reasoning`.
    pub cost_by_type_nanos: BTreeMap<&'static str, i64>,
    /// Completed calls of a model without a price: not in the cost.
    pub unpriced: i64,
    /// Their prompt and completion tokens.
    pub unpriced_tokens: i64,
    /// Requests per provider, for the requests that name one.
    pub providers: BTreeMap<String, i64>,
    /// Errors per type (`_OTHER` for failures without one); adds up to `errors`.
    pub error_types: BTreeMap<String, i64>,
    pub updated_at: DateTime<Utc>,
    /// Grows with every change of the row: the record with the highest revision of a
    /// (key, window_start) is its newest content, and is published last.
    pub revision: i64,
}

impl MetricRow {
    pub fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        let prompt_tokens: i64 = row.try_get("prompt_tokens")?;
        let completion_tokens: i64 = row.try_get("completion_tokens")?;
        Ok(Self {
            tenant_id: row.try_get("tenant_id")?,
            route: row.try_get("route")?,
            model: row.try_get("model")?,
            window_start: row.try_get("window_start")?,
            window_end: row.try_get("window_end")?,
            requests: row.try_get("requests")?,
            errors: row.try_get("errors")?,
            timeouts: row.try_get("timeouts")?,
            avg_latency_ms: row.try_get("avg_latency_ms")?,
            p50_latency_ms: row.try_get("p50_latency_ms")?,
            p95_latency_ms: row.try_get("p95_latency_ms")?,
            p99_latency_ms: row.try_get("p99_latency_ms")?,
            max_latency_ms: row.try_get("max_latency_ms")?,
            avg_ttft_ms: row.try_get("avg_ttft_ms")?,
            avg_prompt_tokens: row.try_get("avg_prompt_tokens")?,
            avg_completion_tokens: row.try_get("avg_completion_tokens")?,
            prompt_tokens,
            completion_tokens,
            cached_prompt_tokens: row.try_get("cached_prompt_tokens")?,
            cache_creation_tokens: row.try_get("cache_creation_tokens")?,
            reasoning_tokens: row.try_get("reasoning_tokens")?,
            total_tokens: prompt_tokens + completion_tokens,
            estimated_cost_usd: row.try_get("estimated_cost_usd")?,
            cost_nanos: row.try_get("cost_nanos")?,
            cost_by_type_nanos: TOKEN_TYPES
                .into_iter()
                .zip(infra::db::cost_parts(row)?)
                .map(|(name, nanos)| (name, i64::try_from(nanos).unwrap_or(i64::MAX)))
                .collect(),
            unpriced: row.try_get("unpriced")?,
            unpriced_tokens: row.try_get("unpriced_tokens")?,
            providers: row.try_get::<Json<_>, _>("providers")?.0,
            error_types: row.try_get::<Json<_>, _>("error_types")?.0,
            updated_at: row.try_get("updated_at")?,
            revision: row.try_get("revision")?,
        })
    }

    /// The `llm.metrics` record key.
    pub fn key(&self) -> String {
        format!("{}|{}|{}", self.tenant_id, self.route, self.model)
    }
}
