//! Postgres: the pool every service uses, the migrations embedded at build time, and window
//! rows read back into aggregates.

use std::str::FromStr;
use std::time::Duration;

use std::collections::BTreeMap;

use metrics_core::aggregate::{Aggregate, Breakdown};
use metrics_core::histogram::{self, HistogramError};
use metrics_core::settings::Env;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Column, PgPool, Row};

/// The migrations under `migrations/`, applied at start-up and by `streamlens-admin migrate`.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Where the database is. `POSTGRES_DSN` is the original name; `DATABASE_URL` is what sqlx
/// tooling expects; either works.
pub fn dsn_from_env(env: &mut Env) -> String {
    env.string(
        &["POSTGRES_DSN", "DATABASE_URL"],
        "postgres://streamlens:streamlens@127.0.0.1:5432/streamlens",
    )
}

pub async fn connect(dsn: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    pool(options(dsn)?, max_connections).await
}

/// What every connection of every service sets. Every statement is prepared once per
/// connection; with the windows partitioned by day, a plan made for each execution's values
/// costs more than running it (1.7 ms of planning for a 0.9 ms range read, 2.7 ms for the
/// 0.15 ms default query, on 8 daily partitions). A generic plan is made once and still reads
/// only the partitions a range covers (pruned as the statement starts).
///
/// JIT compilation is off. A generic plan cannot see its parameters' values, so its cost
/// estimate can pass `jit_above_cost` where the work is small, and the compiled code is not
/// kept between executions: the processor's poll for unpublished windows (`LIMIT $1`, an
/// index read of a few rows, 0.4 ms) was estimated at a million rows on a 10,000,000-window
/// table and compiled 141 functions on every execution, once a second: 160 to 250 ms of
/// Postgres CPU each. No StreamLens statement reads enough rows for compiled code to pay.
fn options(dsn: &str) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(dsn)?
        .options([("plan_cache_mode", "force_generic_plan"), ("jit", "off")]))
}

async fn pool(options: PgConnectOptions, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
}

/// A pool on `dsn` with every migration applied: how each service and the admin command start.
pub async fn connect_migrated(dsn: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    use anyhow::Context;
    let pool = connect(dsn, max_connections)
        .await
        .context("cannot connect to Postgres (POSTGRES_DSN / DATABASE_URL)")?;
    migrate(&pool).await.context("database migrations failed")?;
    Ok(pool)
}

/// A pool for a service's queries: Postgres cancels any statement of it that runs longer than
/// `statement_timeout`, and lists its connections under `application_name` in
/// `pg_stat_activity`. Migrations go through [`connect`]: they may take longer.
pub async fn connect_for_queries(
    dsn: &str,
    max_connections: u32,
    statement_timeout: Duration,
    application_name: &str,
) -> Result<PgPool, sqlx::Error> {
    let options = options(dsn)?.application_name(application_name).options([(
        "statement_timeout",
        format!("{}ms", statement_timeout.as_millis()),
    )]);
    pool(options, max_connections).await
}

/// Whether Postgres cancelled the statement (SQLSTATE 57014, `query_canceled`): its statement
/// timeout passed, or someone cancelled it.
pub fn is_cancelled(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.code().as_deref() == Some("57014"))
}

pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await
}

/// A window row could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Histogram(#[from] HistogramError),
}

/// A count or sum as a BIGINT column stores it: saturating, never wrapping.
pub fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Reading an [`Aggregate`] back from a row selected with [`Aggregate::COLUMNS`].
pub trait StoredAggregate: Sized {
    fn from_row(row: &PgRow) -> Result<Self, RowError>;

    /// Adds the row, histograms added straight from their encoding.
    fn merge_row(&mut self, row: &PgRow) -> Result<(), RowError> {
        if let Some(latency) = self.merge_row_but_latency(row)? {
            self.add_latency_encoded(latency)?;
        }
        Ok(())
    }

    /// Adds all of the row but its latency histogram, which is handed back as stored (`None`
    /// when the row has none), for a caller that may not need it built.
    fn merge_row_but_latency<'r>(&mut self, row: &'r PgRow) -> Result<Option<&'r [u8]>, RowError>;

    /// Adds an encoded latency histogram.
    fn add_latency_encoded(&mut self, bytes: &[u8]) -> Result<(), RowError>;
}

/// A count or sum column as stored (BIGINT), read back; a negative one (never written) as 0.
pub fn count(row: &PgRow, name: &str) -> Result<u64, sqlx::Error> {
    let v: i64 = row.try_get(name)?;
    Ok(u64::try_from(v).unwrap_or(0))
}

impl StoredAggregate for Aggregate {
    fn from_row(row: &PgRow) -> Result<Self, RowError> {
        let mut a = Self::default();
        a.merge_row(row)?;
        Ok(a)
    }

    fn add_latency_encoded(&mut self, bytes: &[u8]) -> Result<(), RowError> {
        Ok(histogram::add_encoded(&mut self.latency, bytes)?)
    }

    fn merge_row_but_latency<'r>(&mut self, row: &'r PgRow) -> Result<Option<&'r [u8]>, RowError> {
        // The columns of `Aggregate::COLUMNS` follow each other, in that order, in every query
        // that reads them: one name lookup finds where they start and the rest are read by
        // position (a roll-up reads thousands of rows an answer; looking up 23 names a row was
        // a fifth of its time).
        let at = row.try_column(AGGREGATE_COLUMNS[0])?.ordinal();
        // Every count column is BIGINT (the migrations say so, and the migration tests read
        // them back), so the type check of each value, a tenth of a roll-up's time, is
        // skipped; a NULL is still an error.
        let count = |i: usize| -> Result<u64, sqlx::Error> {
            let v: i64 = row.try_get_unchecked(at + i)?;
            Ok(u64::try_from(v).unwrap_or(0))
        };
        // Sums saturate, as `Aggregate::merge` does: whatever was stored never wraps around.
        for (i, sum) in [
            &mut self.requests,
            &mut self.errors,
            &mut self.timeouts,
            &mut self.completed,
            &mut self.latency_sum_ms,
            &mut self.ttft_sum_ms,
            &mut self.ttft_count,
            &mut self.prompt_tokens,
            &mut self.completion_tokens,
            &mut self.cached_prompt_tokens,
            &mut self.cache_creation_tokens,
            &mut self.reasoning_tokens,
            &mut self.cost_nanos,
            &mut self.unpriced,
        ]
        .into_iter()
        .enumerate()
        {
            *sum = sum.saturating_add(count(i)?);
        }
        let latency: Option<&[u8]> = row.try_get(at + 14)?;
        let ttft: Option<&[u8]> = row.try_get(at + 15)?;
        if let Some(bytes) = ttft {
            histogram::add_encoded(&mut self.ttft, bytes)?;
        }
        for (i, breakdown) in [(16, &mut self.providers), (17, &mut self.error_types)] {
            let stored: Json<BTreeMap<String, i64>> = row.try_get(at + i)?;
            for (key, n) in stored.0 {
                breakdown.add(&key, u64::try_from(n).unwrap_or(0));
            }
        }
        for (i, sum) in self.cost_parts_nanos.iter_mut().enumerate() {
            *sum = sum.saturating_add(count(18 + i)?);
        }
        self.unpriced_tokens = self.unpriced_tokens.saturating_add(count(23)?);
        Ok(latency)
    }
}

/// `Aggregate::COLUMNS` one by one: the positions `merge_row` reads them at.
const AGGREGATE_COLUMNS: [&str; 24] = [
    "requests",
    "errors",
    "timeouts",
    "completed",
    "latency_sum_ms",
    "ttft_sum_ms",
    "ttft_count",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "cost_nanos",
    "unpriced",
    "latency_histogram",
    "ttft_histogram",
    "providers",
    "error_types",
    "cost_input_nanos",
    "cost_cached_input_nanos",
    "cost_cache_write_nanos",
    "cost_output_nanos",
    "cost_reasoning_nanos",
    "unpriced_tokens",
];

/// A row's cost by token type, from [`Aggregate::COST_COLUMNS`].
pub fn cost_parts(row: &PgRow) -> Result<[u64; 5], sqlx::Error> {
    let mut parts = [0; 5];
    for (part, column) in parts.iter_mut().zip(Aggregate::COST_COLUMNS) {
        *part = count(row, column)?;
    }
    Ok(parts)
}

/// A breakdown as its JSONB column holds it: `{"name": count}`.
pub fn breakdown_json(b: &Breakdown) -> Json<&BTreeMap<String, u64>> {
    Json(b.as_map())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_read_at_the_positions_of_the_aggregate_columns() {
        let listed: Vec<&str> = Aggregate::COLUMNS.split(',').map(str::trim).collect();
        assert_eq!(listed, AGGREGATE_COLUMNS);
        assert_eq!(&AGGREGATE_COLUMNS[18..23], &Aggregate::COST_COLUMNS);
        // A range reads every column at the same position, the TTFT histogram as NULL.
        let range: Vec<&str> = Aggregate::range_columns()
            .split(',')
            .map(str::trim)
            .collect();
        let expected: Vec<&str> = AGGREGATE_COLUMNS
            .iter()
            .map(|&c| {
                if c == "ttft_histogram" {
                    "NULL::BYTEA AS ttft_histogram"
                } else {
                    c
                }
            })
            .collect();
        assert_eq!(range, expected);
    }
}
