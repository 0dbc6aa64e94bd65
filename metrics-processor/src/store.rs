//! Postgres: window rows, positions and decisions, written together.

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::domain::engine::{Committed, Decision, Flush, Waiting};
use crate::domain::histogram;
use crate::domain::join::Ended;
use crate::domain::offsets::{Input, Source};
use crate::domain::window::{Aggregate, WindowKey, WINDOW};
use crate::driver::{Claimed, Epochs, PositionStore};
use infra::db::{breakdown_json, i64_of, StoredAggregate};
use infra::rollups;
use metrics_core::tiles::Level;

mod group;
mod publish;
pub use group::StoredPosition;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Another instance took the partition over; nothing of this commit was written.
    #[error("partition {partition} of {topic} now belongs to another instance")]
    Fenced { topic: String, partition: i32 },
    #[error(transparent)]
    Row(#[from] infra::db::RowError),
    /// The rows could not be delivered to `llm.metrics`; they stay unpublished.
    #[error("llm.metrics: {0}")]
    Publish(String),
    /// The store could not be reached (the in-memory store's injected faults).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// What the store holds for one input partition when it is claimed.
#[derive(Debug, Clone)]
pub struct Claim {
    pub input: Input,
    pub partition: i32,
    /// The last commit's position and watermark, and the offset to resume from.
    pub stored: Option<(Committed, i64)>,
    pub epoch: i64,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    group: String,
    requests: String,
    responses: String,
}

impl Store {
    pub fn new(pool: PgPool, group: &str, requests: &str, responses: &str) -> Self {
        Self {
            pool,
            group: group.to_owned(),
            requests: requests.to_owned(),
            responses: responses.to_owned(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn topic(&self, input: Input) -> &str {
        match input {
            Input::Requests => &self.requests,
            Input::Responses => &self.responses,
        }
    }

    fn input(&self, topic: &str) -> Input {
        if topic == self.requests {
            Input::Requests
        } else {
            Input::Responses
        }
    }

    /// Takes ownership of partition pairs: raises their epoch, so a commit of the previous
    /// owner fails from now on, and returns what they hold.
    /// The third list: records stored as still waiting behind the watermark.
    pub async fn claim(&self, partitions: &[i32]) -> Result<Claimed, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut claims = Vec::new();
        for &partition in partitions {
            for input in [Input::Requests, Input::Responses] {
                let row = sqlx::query(
                    "INSERT INTO processor_positions (consumer_group, topic, partition, position, resume, epoch)
                     VALUES ($1, $2, $3, -1, -1, 1)
                     ON CONFLICT (consumer_group, topic, partition)
                     DO UPDATE SET epoch = processor_positions.epoch + 1
                     RETURNING position, resume, watermark, epoch",
                )
                .bind(&self.group)
                .bind(self.topic(input))
                .bind(partition)
                .fetch_one(&mut *tx)
                .await?;
                let position: i64 = row.try_get("position")?;
                let stored = (position >= 0).then(|| {
                    let watermark: Option<DateTime<Utc>> = row.try_get("watermark").ok().flatten();
                    let resume: i64 = row.try_get("resume").unwrap_or(position);
                    (
                        Committed {
                            position,
                            watermark,
                        },
                        resume,
                    )
                });
                claims.push(Claim {
                    input,
                    partition,
                    stored,
                    epoch: row.try_get("epoch")?,
                });
            }
        }
        let rows = sqlx::query(
            "SELECT topic, partition, request_id, outcome, record_offset, event_time
             FROM processor_decisions WHERE consumer_group = $1 AND partition = ANY($2)",
        )
        .bind(&self.group)
        .bind(partitions)
        .fetch_all(&mut *tx)
        .await?;
        let mut decisions = Vec::with_capacity(rows.len());
        let mut waiting = Vec::new();
        for row in rows {
            let topic: String = row.try_get("topic")?;
            let outcome: String = row.try_get("outcome")?;
            if outcome == "waiting" {
                waiting.push(Source {
                    input: self.input(&topic),
                    partition: row.try_get("partition")?,
                    offset: row.try_get("record_offset")?,
                });
                continue;
            }
            decisions.push(Decision {
                request_id: row.try_get("request_id")?,
                ended: if outcome == "timeout" {
                    Ended::TimedOut
                } else {
                    Ended::Orphaned
                },
                source: Source {
                    input: self.input(&topic),
                    partition: row.try_get("partition")?,
                    offset: row.try_get("record_offset")?,
                },
                at: row.try_get("event_time")?,
            });
        }
        tx.commit().await?;
        Ok(Claimed {
            claims,
            decisions,
            waiting,
        })
    }

    /// Writes one flush atomically: merged window rows, decisions, positions. Fails without
    /// writing anything if any partition's epoch moved on. `id` names this flush: a retry of
    /// one whose commit went through unanswered finds it written and writes nothing more.
    /// Returns how many window rows the flush holds.
    pub async fn commit(
        &self,
        flush: &Flush,
        epochs: &Epochs,
        id: &str,
    ) -> Result<usize, StoreError> {
        let windows = flush.windows();
        let mut tx = self.pool.begin().await?;
        // Lock the flush's positions before looking at them: when the answer to this flush's
        // first COMMIT was lost, that transaction may still be committing, and a plain read
        // would miss it and write everything a second time. FOR UPDATE waits for it and then
        // sees what it wrote. In the order of the updates below.
        let (topics, partitions): (Vec<&str>, Vec<i32>) = flush
            .positions
            .iter()
            .map(|p| (self.topic(p.input), p.partition))
            .unzip();
        let written: bool = sqlx::query_scalar(
            "SELECT COALESCE(bool_or(last_flush = $2), false) FROM (
                 SELECT last_flush FROM processor_positions
                 WHERE consumer_group = $1
                   AND (topic, partition) IN (SELECT * FROM unnest($3::text[], $4::int[]))
                 ORDER BY partition, topic
                 FOR UPDATE
             ) AS locked",
        )
        .bind(&self.group)
        .bind(id)
        .bind(&topics)
        .bind(&partitions)
        .fetch_one(&mut *tx)
        .await?;
        if written {
            tx.rollback().await?;
            return Ok(windows.len());
        }
        for p in &flush.positions {
            let epoch = epochs.get(&(p.input, p.partition)).copied().unwrap_or(-1);
            let updated = sqlx::query(
                "UPDATE processor_positions
                 SET position = $4, resume = $5, watermark = $6, last_flush = $8, updated_at = now()
                 WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND epoch = $7",
            )
            .bind(&self.group)
            .bind(self.topic(p.input))
            .bind(p.partition)
            .bind(p.consumed)
            .bind(p.resume)
            .bind(p.watermark)
            .bind(epoch)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() != 1 {
                return Err(StoreError::Fenced {
                    topic: self.topic(p.input).to_owned(),
                    partition: p.partition,
                });
            }
            // Decisions no replay reaches any more, and the waiting halves this flush
            // replaces.
            sqlx::query(
                "DELETE FROM processor_decisions
                 WHERE consumer_group = $1 AND topic = $2 AND partition = $3
                   AND (record_offset < $4 OR outcome = 'waiting')",
            )
            .bind(&self.group)
            .bind(self.topic(p.input))
            .bind(p.partition)
            .bind(p.resume)
            .execute(&mut *tx)
            .await?;
        }
        // Decisions and waiting halves in one statement each: after a restart behind a
        // backlog, thousands of halves can wait behind the watermark, and a round trip for
        // each made every commit take longer than the interval between them.
        let mut rows = DecisionRows::default();
        for d in &flush.decisions {
            let outcome = if d.ended == Ended::TimedOut {
                "timeout"
            } else {
                "orphan"
            };
            rows.push(self.topic(d.source.input), d, outcome);
        }
        let now = Utc::now();
        for w in &flush.waiting {
            rows.push_waiting(self.topic(w.source.input), w, now);
        }
        if !rows.request_ids.is_empty() {
            sqlx::query(
                "INSERT INTO processor_decisions
                 (consumer_group, topic, partition, request_id, outcome, record_offset, event_time)
                 SELECT $1, * FROM unnest($2::text[], $3::int[], $4::text[], $5::text[],
                                          $6::bigint[], $7::timestamptz[])
                 ON CONFLICT DO NOTHING",
            )
            .bind(&self.group)
            .bind(&rows.topics)
            .bind(&rows.partitions)
            .bind(&rows.request_ids)
            .bind(&rows.outcomes)
            .bind(&rows.offsets)
            .bind(&rows.times)
            .execute(&mut *tx)
            .await?;
        }
        for (key, partial) in &windows {
            merge_window(&mut tx, key, partial).await?;
        }
        // The roll-up rows, after every minute row (the lock order every commit keeps).
        let buckets = rollups::buckets(windows.iter().map(|(key, partial)| rollups::Minute {
            tenant: &key.tenant,
            route: &key.route,
            model: &key.model,
            start: key.start,
            aggregate: partial,
        }));
        rollups::add(&mut tx, buckets).await?;
        tx.commit().await?;
        Ok(windows.len())
    }

    /// Keeps the daily partitions of the windows and their roll-ups: creates those of every
    /// day from the oldest the retention keeps to three days ahead (moving in what the default
    /// partition held for them), and drops those of the days before, in whole UTC days, so a
    /// roll-up never outlives part of the minutes it covers.
    pub async fn maintain_partitions(
        &self,
        now: DateTime<Utc>,
        retention: TimeDelta,
    ) -> Result<Partitions, StoreError> {
        let keep_from = Level::Day.bucket(now - retention).date_naive();
        let created: i32 = sqlx::query_scalar("SELECT streamlens_ensure_partitions($1, $2)")
            .bind(keep_from)
            .bind((now + TimeDelta::days(3)).date_naive())
            .fetch_one(&self.pool)
            .await?;
        let dropped: i32 = sqlx::query_scalar("SELECT streamlens_drop_partitions_before($1)")
            .bind(keep_from)
            .fetch_one(&self.pool)
            .await?;
        Ok(Partitions { created, dropped })
    }
}

/// What [`Store::maintain_partitions`] did: daily partitions created and dropped (two a day,
/// one for the windows and one for their roll-ups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitions {
    pub created: i32,
    pub dropped: i32,
}

/// Rows of `processor_decisions` as columns, for one `unnest` insert.
#[derive(Debug, Default)]
struct DecisionRows {
    topics: Vec<String>,
    partitions: Vec<i32>,
    request_ids: Vec<String>,
    outcomes: Vec<&'static str>,
    offsets: Vec<i64>,
    times: Vec<DateTime<Utc>>,
}

impl DecisionRows {
    fn push(&mut self, topic: &str, d: &Decision, outcome: &'static str) {
        self.row(topic, d.source, &d.request_id, outcome, d.at);
    }

    fn push_waiting(&mut self, topic: &str, w: &Waiting, now: DateTime<Utc>) {
        self.row(topic, w.source, &w.request_id, "waiting", now);
    }

    fn row(
        &mut self,
        topic: &str,
        source: Source,
        request_id: &str,
        outcome: &'static str,
        at: DateTime<Utc>,
    ) {
        self.topics.push(topic.to_owned());
        self.partitions.push(source.partition);
        self.request_ids.push(request_id.to_owned());
        self.outcomes.push(outcome);
        self.offsets.push(source.offset);
        self.times.push(at);
    }
}

/// The store as the synchronous driver uses it, from the pipeline's thread (not one of the
/// runtime's workers).
#[derive(Debug, Clone)]
pub struct Blocking {
    pub store: Store,
    pub runtime: tokio::runtime::Handle,
}

impl PositionStore for Blocking {
    fn claim(&mut self, partitions: &[i32]) -> Result<Claimed, StoreError> {
        self.runtime.block_on(self.store.claim(partitions))
    }

    fn commit(&mut self, flush: &Flush, epochs: &Epochs, id: &str) -> Result<usize, StoreError> {
        self.runtime.block_on(self.store.commit(flush, epochs, id))
    }
}

pub const COLUMNS: &str =
    "tenant_id, route, model, window_start, window_end, requests, errors, timeouts,
    completed, latency_sum_ms, ttft_sum_ms, ttft_count, prompt_tokens, completion_tokens,
    cached_prompt_tokens, cache_creation_tokens, reasoning_tokens, cost_nanos, unpriced,
    latency_histogram, ttft_histogram, providers, error_types, cost_input_nanos,
    cost_cached_input_nanos, cost_cache_write_nanos, cost_output_nanos, cost_reasoning_nanos,
    unpriced_tokens, avg_latency_ms, p50_latency_ms, p95_latency_ms, p99_latency_ms, max_latency_ms, avg_ttft_ms,
    avg_prompt_tokens, avg_completion_tokens, estimated_cost_usd, created_at, updated_at,
    revision";

/// Adds a partial window to its stored row under a row lock, so concurrent writers of the
/// same window (other partitions, other instances) add up instead of overwriting.
async fn merge_window(
    tx: &mut Transaction<'_, Postgres>,
    key: &WindowKey,
    partial: &Aggregate,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO llm_metrics (tenant_id, route, model, window_start, window_end)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, route, model, window_start) DO NOTHING",
    )
    .bind(&*key.tenant)
    .bind(&*key.route)
    .bind(&*key.model)
    .bind(key.start)
    .bind(key.start + WINDOW)
    .execute(&mut **tx)
    .await?;
    let row = sqlx::query(&format!(
        "SELECT {} FROM llm_metrics
         WHERE tenant_id = $1 AND route = $2 AND model = $3 AND window_start = $4 FOR UPDATE",
        Aggregate::COLUMNS
    ))
    .bind(&*key.tenant)
    .bind(&*key.route)
    .bind(&*key.model)
    .bind(key.start)
    .fetch_one(&mut **tx)
    .await?;
    let mut merged = Aggregate::from_row(&row)?;
    merged.merge(partial);
    let a = &merged;
    let [p50, p95, p99, max] = a.latency_quantiles_ms([0.5, 0.95, 0.99, 1.0]);
    sqlx::query(
        "UPDATE llm_metrics SET
            requests = $5, errors = $6, timeouts = $7, completed = $8, latency_sum_ms = $9,
            ttft_sum_ms = $10, ttft_count = $11, prompt_tokens = $12, completion_tokens = $13,
            cached_prompt_tokens = $14, cost_nanos = $15, unpriced = $16,
            latency_histogram = $17, ttft_histogram = $18,
            avg_latency_ms = $19, p50_latency_ms = $20, p95_latency_ms = $21, p99_latency_ms = $22,
            max_latency_ms = $23, avg_ttft_ms = $24, avg_prompt_tokens = $25,
            avg_completion_tokens = $26, estimated_cost_usd = $27, cache_creation_tokens = $28,
            reasoning_tokens = $29, providers = $30, error_types = $31, cost_input_nanos = $32,
            cost_cached_input_nanos = $33, cost_cache_write_nanos = $34, cost_output_nanos = $35,
            cost_reasoning_nanos = $36, unpriced_tokens = $37, updated_at = clock_timestamp(),
            revision = revision + 1
         WHERE tenant_id = $1 AND route = $2 AND model = $3 AND window_start = $4",
    )
    .bind(&*key.tenant)
    .bind(&*key.route)
    .bind(&*key.model)
    .bind(key.start)
    .bind(i64_of(a.requests))
    .bind(i64_of(a.errors))
    .bind(i64_of(a.timeouts))
    .bind(i64_of(a.completed))
    .bind(i64_of(a.latency_sum_ms))
    .bind(i64_of(a.ttft_sum_ms))
    .bind(i64_of(a.ttft_count))
    .bind(i64_of(a.prompt_tokens))
    .bind(i64_of(a.completion_tokens))
    .bind(i64_of(a.cached_prompt_tokens))
    .bind(i64_of(a.cost_nanos))
    .bind(i64_of(a.unpriced))
    .bind(histogram::encode(&a.latency))
    .bind(histogram::encode(&a.ttft))
    .bind(a.avg_latency_ms())
    .bind(p50 as f64)
    .bind(p95 as f64)
    .bind(p99 as f64)
    .bind(max as f64)
    .bind(a.avg_ttft_ms())
    .bind(a.avg_prompt_tokens())
    .bind(a.avg_completion_tokens())
    .bind(a.cost_nanos as f64 / 1e9)
    .bind(i64_of(a.cache_creation_tokens))
    .bind(i64_of(a.reasoning_tokens))
    .bind(breakdown_json(&a.providers))
    .bind(breakdown_json(&a.error_types))
    .bind(i64_of(a.cost_parts_nanos[0]))
    .bind(i64_of(a.cost_parts_nanos[1]))
    .bind(i64_of(a.cost_parts_nanos[2]))
    .bind(i64_of(a.cost_parts_nanos[3]))
    .bind(i64_of(a.cost_parts_nanos[4]))
    .bind(i64_of(a.unpriced_tokens))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
