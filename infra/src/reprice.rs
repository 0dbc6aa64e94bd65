//! Re-pricing stored windows under the current price table (`streamlens-admin prices
//! reprice`): each minute window's cost is computed anew from its stored token sums at the
//! prices in force at its start, its roll-ups change by the same amounts, and `llm.metrics`
//! follows (a changed row is a new revision the processors publish). One UTC day per
//! transaction; every run leaves an audit row in `price_reprices`.
//!
//! Locks: a day's minute rows are locked in key order first, then their roll-up rows in key
//! order, as a processor's commit locks them, and roll-ups change by differences, so a commit
//! racing the run adds what it adds on top. A deadlock with a commit nevertheless (Postgres
//! picks one of the two) makes the day start over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use metrics_core::aggregate::Aggregate;
use metrics_core::pricing::{PricingTable, Tokens};
use metrics_core::tiles::Level;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::db::{count, i64_of};
use crate::rollups::{self, BucketKey, CostChange};

/// What a run did; `id` is its audit row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repriced {
    pub id: i64,
    pub days: u64,
    pub windows: u64,
    pub changed: u64,
    pub old_cost_nanos: i64,
    pub new_cost_nanos: i64,
    pub old_unpriced: i64,
    pub new_unpriced: i64,
}

/// Names a price table by its content: the first 16 hex digits of a SHA-256 of every entry.
pub fn table_version(table: &PricingTable) -> String {
    Sha256::digest(format!("{table:?}").as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Re-prices the windows starting in `[from, to)` (of `tenant`, or of every tenant) under
/// `table`, recording the run as done by `actor`.
pub async fn reprice(
    pool: &PgPool,
    table: &PricingTable,
    tenant: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    actor: &str,
) -> Result<Repriced, sqlx::Error> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO price_reprices (actor, table_version, tenant_id, range_from, range_to)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(actor)
    .bind(table_version(table))
    .bind(tenant)
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await?;
    let mut done = Repriced {
        id,
        ..Repriced::default()
    };
    let mut start = from;
    while start < to {
        let end = (Level::Day.bucket(start) + TimeDelta::days(1)).min(to);
        let mut attempt = 0;
        let day = loop {
            match reprice_part(pool, table, tenant, start, end, id).await {
                Ok(day) => break day,
                Err(e) if attempt < 5 && starts_over(&e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, %start, "re-pricing a day starts over");
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => return Err(e),
            }
        };
        done.days += 1;
        done.windows += day.windows;
        done.changed += day.changed;
        done.old_cost_nanos = done.old_cost_nanos.saturating_add(day.old_cost_nanos);
        done.new_cost_nanos = done.new_cost_nanos.saturating_add(day.new_cost_nanos);
        done.old_unpriced += day.old_unpriced;
        done.new_unpriced += day.new_unpriced;
        start = end;
    }
    sqlx::query("UPDATE price_reprices SET finished_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(done)
}

/// A deadlock or a serialization failure: the transaction did nothing and may run again.
fn starts_over(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40P01" | "40001")))
}

/// The changed minute rows of one transaction, one array per column.
#[derive(Default)]
struct Changed {
    tenants: Vec<String>,
    routes: Vec<String>,
    models: Vec<String>,
    starts: Vec<DateTime<Utc>>,
    parts: [Vec<i64>; 5],
    totals: Vec<i64>,
    unpriced: Vec<i64>,
    unpriced_tokens: Vec<i64>,
}

/// A minute row's cost figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Figures {
    parts: [i64; 5],
    total: i64,
    unpriced: i64,
    unpriced_tokens: i64,
}

/// Re-prices the windows of `[from, to)`, within one UTC day, in one transaction.
async fn reprice_part(
    pool: &PgPool,
    table: &PricingTable,
    tenant: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    id: i64,
) -> Result<Repriced, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(&format!(
        "SELECT tenant_id, route, model, window_start, completed, prompt_tokens,
                cached_prompt_tokens, cache_creation_tokens, completion_tokens, reasoning_tokens,
                cost_nanos, unpriced, unpriced_tokens, {}
         FROM llm_metrics
         WHERE window_start >= $1 AND window_start < $2 AND ($3::TEXT IS NULL OR tenant_id = $3)
         ORDER BY tenant_id, route, model, window_start
         FOR UPDATE",
        Aggregate::COST_COLUMNS.join(", ")
    ))
    .bind(from)
    .bind(to)
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    let mut day = Repriced {
        windows: rows.len() as u64,
        ..Repriced::default()
    };
    let mut changed = Changed::default();
    let mut buckets: BTreeMap<BucketKey, CostChange> = BTreeMap::new();
    for row in &rows {
        let model: String = row.try_get("model")?;
        let start: DateTime<Utc> = row.try_get("window_start")?;
        let tokens = Tokens {
            prompt: count(row, "prompt_tokens")?,
            cached: count(row, "cached_prompt_tokens")?,
            cache_write: count(row, "cache_creation_tokens")?,
            completion: count(row, "completion_tokens")?,
            reasoning: count(row, "reasoning_tokens")?,
        };
        let priced = table.window_cost(&model, start, tokens, count(row, "completed")?);
        let mut old_parts = [0; 5];
        for (part, column) in old_parts.iter_mut().zip(Aggregate::COST_COLUMNS) {
            *part = i64_of(count(row, column)?);
        }
        let old = Figures {
            parts: old_parts,
            total: i64_of(count(row, "cost_nanos")?),
            unpriced: i64_of(count(row, "unpriced")?),
            unpriced_tokens: i64_of(count(row, "unpriced_tokens")?),
        };
        let new = Figures {
            parts: priced.cost.parts.map(i64_of),
            total: i64_of(priced.cost.nanos()),
            unpriced: i64_of(priced.unpriced),
            unpriced_tokens: i64_of(priced.unpriced_tokens),
        };
        day.old_cost_nanos = day.old_cost_nanos.saturating_add(old.total);
        day.new_cost_nanos = day.new_cost_nanos.saturating_add(new.total);
        day.old_unpriced += old.unpriced;
        day.new_unpriced += new.unpriced;
        if old == new {
            continue;
        }
        day.changed += 1;
        let tenant: Arc<str> = row.try_get::<String, _>("tenant_id")?.into();
        let route: Arc<str> = row.try_get::<String, _>("route")?.into();
        let model: Arc<str> = model.into();
        let change = CostChange {
            parts: std::array::from_fn(|i| new.parts[i] - old.parts[i]),
            total: new.total - old.total,
            unpriced: new.unpriced - old.unpriced,
            unpriced_tokens: new.unpriced_tokens - old.unpriced_tokens,
        };
        for level in Level::ROLLUPS {
            let key = BucketKey::of(level, &tenant, &route, &model, start);
            buckets.entry(key).or_default().add(&change);
        }
        changed.tenants.push(tenant.to_string());
        changed.routes.push(route.to_string());
        changed.models.push(model.to_string());
        changed.starts.push(start);
        for (column, v) in changed.parts.iter_mut().zip(new.parts) {
            column.push(v);
        }
        changed.totals.push(new.total);
        changed.unpriced.push(new.unpriced);
        changed.unpriced_tokens.push(new.unpriced_tokens);
    }
    if !changed.starts.is_empty() {
        // A new revision with a new `updated_at`: the processors publish it to `llm.metrics`.
        sqlx::query(
            "UPDATE llm_metrics AS m SET
                cost_input_nanos = v.input, cost_cached_input_nanos = v.cached_input,
                cost_cache_write_nanos = v.cache_write, cost_output_nanos = v.output,
                cost_reasoning_nanos = v.reasoning, cost_nanos = v.total, unpriced = v.unpriced,
                unpriced_tokens = v.unpriced_tokens,
                estimated_cost_usd = v.total::float8 / 1e9::float8,
                updated_at = clock_timestamp(), revision = m.revision + 1
             FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bigint[],
                         $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[],
                         $11::bigint[], $12::bigint[])
                  AS v(tenant_id, route, model, window_start, input, cached_input, cache_write,
                       output, reasoning, total, unpriced, unpriced_tokens)
             WHERE m.tenant_id = v.tenant_id AND m.route = v.route AND m.model = v.model
               AND m.window_start = v.window_start
               AND m.window_start >= $13 AND m.window_start < $14",
        )
        .bind(&changed.tenants)
        .bind(&changed.routes)
        .bind(&changed.models)
        .bind(&changed.starts)
        .bind(&changed.parts[0])
        .bind(&changed.parts[1])
        .bind(&changed.parts[2])
        .bind(&changed.parts[3])
        .bind(&changed.parts[4])
        .bind(&changed.totals)
        .bind(&changed.unpriced)
        .bind(&changed.unpriced_tokens)
        .bind(from)
        .bind(to)
        .execute(&mut *tx)
        .await?;
        rollups::change_costs(&mut tx, buckets).await?;
    }
    sqlx::query(
        "UPDATE price_reprices SET windows = windows + $2, changed = changed + $3,
            old_cost_nanos = old_cost_nanos + $4, new_cost_nanos = new_cost_nanos + $5,
            old_unpriced = old_unpriced + $6, new_unpriced = new_unpriced + $7
         WHERE id = $1",
    )
    .bind(id)
    .bind(i64_of(day.windows))
    .bind(i64_of(day.changed))
    .bind(day.old_cost_nanos)
    .bind(day.new_cost_nanos)
    .bind(day.old_unpriced)
    .bind(day.new_unpriced)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(day)
}

/// The audit rows of the latest runs, newest first.
pub async fn history(pool: &PgPool, limit: i64) -> Result<Vec<PgRow>, sqlx::Error> {
    sqlx::query(
        "SELECT id, actor, table_version, tenant_id, range_from, range_to, started_at,
                finished_at, windows, changed, old_cost_nanos, new_cost_nanos, old_unpriced,
                new_unpriced
         FROM price_reprices ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}
