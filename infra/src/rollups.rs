//! Five-minute, hourly and daily roll-ups of the one-minute windows (`llm_metrics_rollups`).
//!
//! The processor adds each flush's partial windows to their five-minute, hour and day rows in
//! the same transaction that adds them to the minute rows ([`add`]), so a bucket always equals
//! the minute rows it covers: sums exact, histograms and breakdowns merged. [`rebuild`]
//! recomputes buckets from the minute rows, for windows written before roll-ups existed.
//!
//! Each bucket is kept four times over: per series (route and model), per model with every
//! route merged, per route with every model merged, and for the whole tenant, the merged
//! side holding [`ALL`] in place of a name (names are never blank). A query reads the rows
//! that keep apart only what it asks for ([`Kept`]), so an answer per model over a tenant with
//! many routes reads one row per model and bucket, not one per series.
//!
//! Locks: a commit locks its minute rows first, then its roll-up rows in primary-key order,
//! in one statement, so two commits touching the same buckets wait for each other instead of
//! deadlocking. A rebuild locks the whole table against writers for one day at a time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, TimeDelta, Utc};
use futures::TryStreamExt;
use metrics_core::aggregate::Aggregate;
use metrics_core::histogram;
use metrics_core::tiles::{self, Level};
use sqlx::postgres::PgRow;
use sqlx::{Connection, PgConnection, PgExecutor, PgPool, Row};

use crate::db::{i64_of, RowError, StoredAggregate};

/// One roll-up row's key, ordered as the table's primary key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BucketKey {
    pub tenant: Arc<str>,
    pub seconds: i32,
    pub start: DateTime<Utc>,
    pub route: Arc<str>,
    pub model: Arc<str>,
}

impl BucketKey {
    /// The bucket of `level` that a minute window of the series starting at `start` falls in.
    pub fn of(
        level: Level,
        tenant: &Arc<str>,
        route: &Arc<str>,
        model: &Arc<str>,
        start: DateTime<Utc>,
    ) -> Self {
        Self {
            tenant: Arc::clone(tenant),
            seconds: level.seconds(),
            start: level.bucket(start),
            route: Arc::clone(route),
            model: Arc::clone(model),
        }
    }

    fn of_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            tenant: row.try_get::<String, _>("tenant_id")?.into(),
            seconds: row.try_get("bucket_seconds")?,
            start: row.try_get("bucket_start")?,
            route: row.try_get::<String, _>("route")?.into(),
            model: row.try_get::<String, _>("model")?.into(),
        })
    }
}

/// The route or model of a roll-up row that merges every route or every model.
pub const ALL: &str = "";

static ALL_NAMES: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(ALL));

/// `name` where a grouping keeps it apart, [`ALL`] where it merges.
fn kept_name(keep: bool, name: &Arc<str>) -> Arc<str> {
    if keep {
        Arc::clone(name)
    } else {
        Arc::clone(&ALL_NAMES)
    }
}

/// What roll-up rows keep apart below the tenant: routes, models, both (the series) or
/// neither. A filter on a route or a model needs the rows that keep routes or models apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    pub routes: bool,
    pub models: bool,
}

impl Kept {
    /// Every series apart.
    pub const SERIES: Kept = Kept {
        routes: true,
        models: true,
    };

    /// Routes and models merged (what a filter does not name).
    pub const NONE: Kept = Kept {
        routes: false,
        models: false,
    };

    /// The four groupings every bucket is kept in.
    const GROUPINGS: [Kept; 4] = [
        Kept::SERIES,
        Kept {
            routes: false,
            models: true,
        },
        Kept {
            routes: true,
            models: false,
        },
        Kept::NONE,
    ];

    /// The rows that hold what a read needs: the filtered or grouped dimensions apart, the
    /// others merged.
    fn for_read(route: Option<&str>, model: Option<&str>, kept: Kept) -> Kept {
        Kept {
            routes: kept.routes || route.is_some(),
            models: kept.models || model.is_some(),
        }
    }

    /// The condition on a roll-up row's route and model that selects this grouping. A kept
    /// name is asked for as greater than [`ALL`] (names are never blank, and '' sorts before
    /// every other text), which the index checks itself; `<>` made Postgres fetch every other
    /// grouping's row in range from the heap to throw it away.
    fn condition(self) -> &'static str {
        match (self.routes, self.models) {
            (true, true) => "route > '' AND model > ''",
            (false, true) => "route = '' AND model > ''",
            (true, false) => "route > '' AND model = ''",
            (false, false) => "route = '' AND model = ''",
        }
    }
}

/// A minute window as the roll-ups take it: its series, its start, what it adds.
#[derive(Debug, Clone, Copy)]
pub struct Minute<'a> {
    pub tenant: &'a Arc<str>,
    pub route: &'a Arc<str>,
    pub model: &'a Arc<str>,
    pub start: DateTime<Utc>,
    pub aggregate: &'a Aggregate,
}

/// The roll-up buckets `windows` fall in, each with the sum of what falls in it.
pub fn buckets<'a>(
    windows: impl IntoIterator<Item = Minute<'a>>,
) -> BTreeMap<BucketKey, Aggregate> {
    let mut out: BTreeMap<BucketKey, Aggregate> = BTreeMap::new();
    for w in windows {
        for level in Level::ROLLUPS {
            let key = BucketKey::of(level, w.tenant, w.route, w.model, w.start);
            out.entry(key).or_default().merge(w.aggregate);
        }
    }
    grouped(out, Aggregate::merge)
}

/// Series buckets and, beside them, the same buckets with routes, models or both merged
/// (`add` adds a series' value into a merged one): every row a commit, a rebuild or a cost
/// change touches.
fn grouped<V: Default>(
    series: BTreeMap<BucketKey, V>,
    add: impl Fn(&mut V, &V),
) -> BTreeMap<BucketKey, V> {
    let mut merged: BTreeMap<BucketKey, V> = BTreeMap::new();
    for (key, value) in &series {
        // Every grouping but the first, the series itself.
        for kept in &Kept::GROUPINGS[1..] {
            let key = BucketKey {
                route: kept_name(kept.routes, &key.route),
                model: kept_name(kept.models, &key.model),
                ..key.clone()
            };
            add(merged.entry(key).or_default(), value);
        }
    }
    let mut all = series;
    all.extend(merged);
    all
}

const KEY_ARRAYS: &str = "$1::text[], $2::int[], $3::timestamptz[], $4::text[], $5::text[]";

/// Adds partial minute windows to their roll-up rows, inside the caller's transaction.
pub async fn add(
    conn: &mut PgConnection,
    partials: BTreeMap<BucketKey, Aggregate>,
) -> Result<(), RowError> {
    if partials.is_empty() {
        return Ok(());
    }
    let keys = Keys::of(partials.keys());
    // Creates the missing rows and locks every row, in key order, and reads what they hold.
    let stored = sqlx::query(&format!(
        "INSERT INTO llm_metrics_rollups AS r (tenant_id, bucket_seconds, bucket_start, route, model)
         SELECT tenant_id, bucket_seconds, bucket_start, route, model
         FROM unnest({KEY_ARRAYS}) WITH ORDINALITY
              AS k(tenant_id, bucket_seconds, bucket_start, route, model, n)
         ORDER BY n
         ON CONFLICT (tenant_id, bucket_seconds, bucket_start, route, model)
         DO UPDATE SET updated_at = r.updated_at
         RETURNING tenant_id, bucket_seconds, bucket_start, route, model, {}",
        Aggregate::COLUMNS
    ))
    .bind_keys(&keys)
    .fetch_all(&mut *conn)
    .await?;
    let mut merged = partials;
    for row in &stored {
        if let Some(total) = merged.get_mut(&BucketKey::of_row(row)?) {
            total.merge_row(row)?;
        }
    }
    let values = Values::of(merged.values());
    sqlx::query(&format!(
        "UPDATE llm_metrics_rollups AS r SET {}, updated_at = clock_timestamp()
         FROM unnest({KEY_ARRAYS}, {}) AS v({}, {})
         WHERE r.tenant_id = v.tenant_id AND r.bucket_seconds = v.bucket_seconds
           AND r.bucket_start = v.bucket_start AND r.route = v.route AND r.model = v.model",
        Values::ASSIGNMENTS,
        Values::ARRAYS,
        KEY_COLUMNS,
        Aggregate::COLUMNS,
    ))
    .bind_keys(&keys)
    .bind_values(&values)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

const KEY_COLUMNS: &str = "tenant_id, bucket_seconds, bucket_start, route, model";

/// A change of a bucket's cost, each figure up or down: nano-dollars per token type (in the
/// order of `Aggregate::COST_COLUMNS`), the whole (which differs from the parts' change where
/// windows written before costs were split held a whole without parts), unpriced calls and
/// their tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CostChange {
    pub parts: [i64; 5],
    pub total: i64,
    pub unpriced: i64,
    pub unpriced_tokens: i64,
}

impl CostChange {
    /// Adds another change to this one.
    pub fn add(&mut self, other: &CostChange) {
        for (sum, part) in self.parts.iter_mut().zip(other.parts) {
            *sum += part;
        }
        self.total += other.total;
        self.unpriced += other.unpriced;
        self.unpriced_tokens += other.unpriced_tokens;
    }
}

/// Applies cost changes of series' buckets to existing roll-up rows, in every grouping, inside
/// the caller's transaction. Each row changes by a difference, not to a value read earlier, so
/// what a concurrent commit adds is kept; rows are locked in key order, as commits lock them.
/// A bucket without a row is left alone: a rebuild writes it later from the minute rows.
pub async fn change_costs(
    conn: &mut PgConnection,
    series: BTreeMap<BucketKey, CostChange>,
) -> Result<(), sqlx::Error> {
    if series.is_empty() {
        return Ok(());
    }
    let changes = grouped(series, CostChange::add);
    let keys = Keys::of(changes.keys());
    let mut parts: [Vec<i64>; 5] = Default::default();
    let (mut totals, mut unpriced, mut unpriced_tokens) = (Vec::new(), Vec::new(), Vec::new());
    for change in changes.values() {
        for (column, v) in parts.iter_mut().zip(change.parts) {
            column.push(v);
        }
        totals.push(change.total);
        unpriced.push(change.unpriced);
        unpriced_tokens.push(change.unpriced_tokens);
    }
    let matches = "r.tenant_id = v.tenant_id AND r.bucket_seconds = v.bucket_seconds \
        AND r.bucket_start = v.bucket_start AND r.route = v.route AND r.model = v.model";
    sqlx::query(&format!(
        "SELECT 1 FROM llm_metrics_rollups AS r
         JOIN unnest({KEY_ARRAYS}) AS v({KEY_COLUMNS}) ON {matches}
         ORDER BY r.tenant_id, r.bucket_seconds, r.bucket_start, r.route, r.model
         FOR UPDATE OF r"
    ))
    .bind_keys(&keys)
    .execute(&mut *conn)
    .await?;
    sqlx::query(&format!(
        "UPDATE llm_metrics_rollups AS r SET
            cost_input_nanos = r.cost_input_nanos + v.input,
            cost_cached_input_nanos = r.cost_cached_input_nanos + v.cached_input,
            cost_cache_write_nanos = r.cost_cache_write_nanos + v.cache_write,
            cost_output_nanos = r.cost_output_nanos + v.output,
            cost_reasoning_nanos = r.cost_reasoning_nanos + v.reasoning,
            cost_nanos = r.cost_nanos + v.total, unpriced = r.unpriced + v.unpriced,
            unpriced_tokens = r.unpriced_tokens + v.unpriced_tokens,
            updated_at = clock_timestamp()
         FROM unnest({KEY_ARRAYS}, $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[],
                     $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[])
              AS v({KEY_COLUMNS}, input, cached_input, cache_write, output, reasoning, total,
                   unpriced, unpriced_tokens)
         WHERE {matches}"
    ))
    .bind_keys(&keys)
    .bind(&parts[0])
    .bind(&parts[1])
    .bind(&parts[2])
    .bind(&parts[3])
    .bind(&parts[4])
    .bind(&totals)
    .bind(&unpriced)
    .bind(&unpriced_tokens)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rebuilt {
    pub days: u64,
    pub minute_rows: u64,
    pub buckets: u64,
}

/// Recomputes from the minute rows every roll-up of the UTC days that overlap `[from, to)`,
/// one day per transaction. Each day's transaction locks the roll-ups against writers (a
/// running processor's commits wait for it), so what a commit adds is either in the minute
/// rows the rebuild reads or added after the rebuild wrote the day.
pub async fn rebuild(
    conn: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Rebuilt, RowError> {
    let mut done = Rebuilt::default();
    let mut day = Level::Day.bucket(from);
    while day < to {
        let next = day + TimeDelta::days(1);
        let mut tx = conn.begin().await?;
        sqlx::query("LOCK TABLE llm_metrics_rollups IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        // Streamed: a day of a busy database is millions of rows; only the buckets are kept.
        let sql = format!(
            "SELECT tenant_id, route, model, window_start, {} FROM llm_metrics
             WHERE window_start >= $1 AND window_start < $2",
            Aggregate::COLUMNS
        );
        let mut rows = sqlx::query(&sql).bind(day).bind(next).fetch(&mut *tx);
        let mut totals: BTreeMap<BucketKey, Aggregate> = BTreeMap::new();
        let mut read = 0;
        while let Some(row) = rows.try_next().await? {
            read += 1;
            let row = &row;
            let start: DateTime<Utc> = row.try_get("window_start")?;
            let (tenant, route, model): (Arc<str>, Arc<str>, Arc<str>) = (
                row.try_get::<String, _>("tenant_id")?.into(),
                row.try_get::<String, _>("route")?.into(),
                row.try_get::<String, _>("model")?.into(),
            );
            for level in Level::ROLLUPS {
                let key = BucketKey::of(level, &tenant, &route, &model, start);
                totals.entry(key).or_default().merge_row(row)?;
            }
        }
        drop(rows);
        let totals = grouped(totals, Aggregate::merge);
        sqlx::query(
            "DELETE FROM llm_metrics_rollups WHERE bucket_start >= $1 AND bucket_start < $2",
        )
        .bind(day)
        .bind(next)
        .execute(&mut *tx)
        .await?;
        if !totals.is_empty() {
            let keys = Keys::of(totals.keys());
            let values = Values::of(totals.values());
            sqlx::query(&format!(
                "INSERT INTO llm_metrics_rollups ({KEY_COLUMNS}, {})
                 SELECT * FROM unnest({KEY_ARRAYS}, {})",
                Aggregate::COLUMNS,
                Values::ARRAYS,
            ))
            .bind_keys(&keys)
            .bind_values(&values)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        done.days += 1;
        done.minute_rows += read;
        done.buckets += totals.len() as u64;
        day = next;
    }
    Ok(done)
}

/// The stored rows of a tenant's windows of `[from, to)` (optionally one route's, one
/// model's): roll-up rows (five minutes, hours, days; no coarser than `coarsest`) wherever
/// whole buckets fit and minute rows at the edges, each with `route`, `model`, `window_start`
/// (a bucket's start) and [`Aggregate::range_columns`] (no TTFT histogram). Added up, they
/// are the range's windows.
/// Roll-up rows keep apart what `kept` asks for (and a filtered route or model) and merge
/// the rest (their `route` or `model` then [`ALL`]); minute rows are the series'.
#[allow(clippy::too_many_arguments)]
pub async fn range_rows<'c>(
    conn: impl PgExecutor<'c>,
    tenant: &str,
    route: Option<&str>,
    model: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    coarsest: Level,
    kept: Kept,
) -> Result<Vec<PgRow>, sqlx::Error> {
    let grouping = Kept::for_read(route, model, kept).condition();
    let tiles = tiles::plan(from, to, coarsest);
    if tiles.is_empty() {
        return Ok(Vec::new());
    }
    // One statement: a part per tile, each an index range scan of its table.
    let series = "tenant_id = $1 AND ($2::TEXT IS NULL OR route = $2) \
                  AND ($3::TEXT IS NULL OR model = $3)";
    let parts: Vec<String> = tiles
        .iter()
        .enumerate()
        .map(|(i, tile)| {
            let (a, b) = (4 + 2 * i, 5 + 2 * i);
            match tile.level {
                Level::Minute => format!(
                    "SELECT route, model, window_start, {} FROM llm_metrics
                     WHERE {series} AND window_start >= ${a} AND window_start < ${b}",
                    Aggregate::range_columns()
                ),
                level => format!(
                    "SELECT route, model, bucket_start AS window_start, {} FROM llm_metrics_rollups
                     WHERE {series} AND {grouping} AND bucket_seconds = {}
                       AND bucket_start >= ${a} AND bucket_start < ${b}",
                    Aggregate::range_columns(),
                    level.seconds()
                ),
            }
        })
        .collect();
    let sql = parts.join(" UNION ALL ");
    let mut query = sqlx::query(&sql).bind(tenant).bind(route).bind(model);
    for tile in &tiles {
        query = query.bind(tile.from).bind(tile.to);
    }
    query.fetch_all(conn).await
}

/// The calls of `[from, to)` (one route, one model, or all) merged into one aggregate, from
/// the coarsest rows that tile the range.
pub async fn merged<'c>(
    conn: impl PgExecutor<'c>,
    tenant: &str,
    route: Option<&str>,
    model: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    coarsest: Level,
) -> Result<Aggregate, RowError> {
    let mut merged = Aggregate::lean();
    let rows = range_rows(conn, tenant, route, model, from, to, coarsest, Kept::NONE).await?;
    for row in &rows {
        merged.merge_row(row)?;
    }
    Ok(merged)
}

/// Whether every roll-up covers all its minute rows (false until the roll-ups of windows
/// written before they existed have been rebuilt).
pub async fn complete<'c>(conn: impl PgExecutor<'c>) -> Result<bool, sqlx::Error> {
    let complete: Option<bool> = sqlx::query_scalar("SELECT complete FROM rollup_state")
        .fetch_optional(conn)
        .await?;
    Ok(complete.unwrap_or(false))
}

/// Whether the roll-ups may be read: asked of the database until they are complete, then
/// remembered (they stay complete).
#[derive(Debug, Default)]
pub struct Readable {
    complete: AtomicBool,
}

impl Readable {
    /// The coarsest rows a query may read: `wanted`, or minute rows while the roll-ups do
    /// not yet cover every window.
    pub async fn readable(&self, pool: &PgPool, wanted: Level) -> Result<Level, sqlx::Error> {
        if !self.complete.load(Ordering::Relaxed) {
            let complete = complete(pool).await?;
            self.complete.store(complete, Ordering::Relaxed);
            if !complete {
                return Ok(Level::Minute);
            }
        }
        Ok(wanted)
    }
}

/// Builds the roll-ups of every stored minute window if they are not complete yet, then
/// records them complete. Safe to run beside running processors and other instances of
/// itself (an advisory lock lets one build at a time; the others wait and find it done).
/// Uses one connection of `pool` throughout.
pub async fn ensure_complete(pool: &PgPool) -> Result<Option<Rebuilt>, RowError> {
    if complete(pool).await? {
        return Ok(None);
    }
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock(hashtext('streamlens.rollups.rebuild'))")
        .execute(&mut *conn)
        .await?;
    let built = build_missing(&mut conn).await;
    sqlx::query("SELECT pg_advisory_unlock(hashtext('streamlens.rollups.rebuild'))")
        .execute(&mut *conn)
        .await?;
    built
}

async fn build_missing(conn: &mut PgConnection) -> Result<Option<Rebuilt>, RowError> {
    if complete(&mut *conn).await? {
        return Ok(None);
    }
    let range: (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT min(window_start), max(window_start) FROM llm_metrics")
            .fetch_one(&mut *conn)
            .await?;
    let rebuilt = match range {
        (Some(first), Some(last)) => {
            rebuild(&mut *conn, first, last + TimeDelta::minutes(1)).await?
        }
        _ => Rebuilt::default(),
    };
    sqlx::query("UPDATE rollup_state SET complete = true, built_at = now()")
        .execute(&mut *conn)
        .await?;
    Ok(Some(rebuilt))
}

/// The key columns of many rows, one array each.
struct Keys {
    tenants: Vec<String>,
    seconds: Vec<i32>,
    starts: Vec<DateTime<Utc>>,
    routes: Vec<String>,
    models: Vec<String>,
}

impl Keys {
    fn of<'a>(keys: impl Iterator<Item = &'a BucketKey>) -> Self {
        let mut out = Keys {
            tenants: Vec::new(),
            seconds: Vec::new(),
            starts: Vec::new(),
            routes: Vec::new(),
            models: Vec::new(),
        };
        for k in keys {
            out.tenants.push(k.tenant.to_string());
            out.seconds.push(k.seconds);
            out.starts.push(k.start);
            out.routes.push(k.route.to_string());
            out.models.push(k.model.to_string());
        }
        out
    }
}

/// The columns of [`Aggregate::COLUMNS`] for many rows, one array each, in that order.
struct Values {
    sums: [Vec<i64>; 14],
    latency: Vec<Vec<u8>>,
    ttft: Vec<Vec<u8>>,
    providers: Vec<String>,
    error_types: Vec<String>,
    cost_parts: [Vec<i64>; 5],
    unpriced_tokens: Vec<i64>,
}

impl Values {
    /// The arrays bound after the five key arrays, typed as `Aggregate::COLUMNS` lists them.
    const ARRAYS: &'static str = "$6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], \
        $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], \
        $15::bigint[], $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[], \
        $20::bytea[], $21::bytea[], $22::jsonb[], $23::jsonb[], $24::bigint[], $25::bigint[], \
        $26::bigint[], $27::bigint[], $28::bigint[], $29::bigint[]";

    const ASSIGNMENTS: &'static str = "requests = v.requests, errors = v.errors, \
        timeouts = v.timeouts, completed = v.completed, latency_sum_ms = v.latency_sum_ms, \
        ttft_sum_ms = v.ttft_sum_ms, ttft_count = v.ttft_count, prompt_tokens = v.prompt_tokens, \
        completion_tokens = v.completion_tokens, cached_prompt_tokens = v.cached_prompt_tokens, \
        cache_creation_tokens = v.cache_creation_tokens, reasoning_tokens = v.reasoning_tokens, \
        cost_nanos = v.cost_nanos, unpriced = v.unpriced, \
        latency_histogram = v.latency_histogram, ttft_histogram = v.ttft_histogram, \
        providers = v.providers, error_types = v.error_types, \
        cost_input_nanos = v.cost_input_nanos, cost_cached_input_nanos = v.cost_cached_input_nanos, \
        cost_cache_write_nanos = v.cost_cache_write_nanos, cost_output_nanos = v.cost_output_nanos, \
        cost_reasoning_nanos = v.cost_reasoning_nanos, unpriced_tokens = v.unpriced_tokens";

    fn of<'a>(aggregates: impl Iterator<Item = &'a Aggregate>) -> Self {
        let mut out = Values {
            sums: Default::default(),
            latency: Vec::new(),
            ttft: Vec::new(),
            providers: Vec::new(),
            error_types: Vec::new(),
            cost_parts: Default::default(),
            unpriced_tokens: Vec::new(),
        };
        for a in aggregates {
            // In the order of `Aggregate::COLUMNS`.
            let sums = [
                a.requests,
                a.errors,
                a.timeouts,
                a.completed,
                a.latency_sum_ms,
                a.ttft_sum_ms,
                a.ttft_count,
                a.prompt_tokens,
                a.completion_tokens,
                a.cached_prompt_tokens,
                a.cache_creation_tokens,
                a.reasoning_tokens,
                a.cost_nanos,
                a.unpriced,
            ];
            for (column, v) in out.sums.iter_mut().zip(sums) {
                column.push(i64_of(v));
            }
            out.latency.push(histogram::encode(&a.latency));
            out.ttft.push(histogram::encode(&a.ttft));
            out.providers.push(json(a.providers.as_map()));
            out.error_types.push(json(a.error_types.as_map()));
            for (column, v) in out.cost_parts.iter_mut().zip(a.cost_parts_nanos) {
                column.push(i64_of(v));
            }
            out.unpriced_tokens.push(i64_of(a.unpriced_tokens));
        }
        out
    }
}

fn json(map: &BTreeMap<String, u64>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_owned())
}

/// Binding [`Keys`] as `$1` to `$5` and [`Values`] after them.
trait BindRows<'q> {
    fn bind_keys(self, keys: &'q Keys) -> Self;
    fn bind_values(self, values: &'q Values) -> Self;
}

impl<'q> BindRows<'q> for sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    fn bind_keys(self, keys: &'q Keys) -> Self {
        self.bind(&keys.tenants)
            .bind(&keys.seconds)
            .bind(&keys.starts)
            .bind(&keys.routes)
            .bind(&keys.models)
    }

    fn bind_values(self, values: &'q Values) -> Self {
        let mut q = self;
        for column in &values.sums {
            q = q.bind(column);
        }
        q = q
            .bind(&values.latency)
            .bind(&values.ttft)
            .bind(&values.providers)
            .bind(&values.error_types);
        for column in &values.cost_parts {
            q = q.bind(column);
        }
        q.bind(&values.unpriced_tokens)
    }
}
