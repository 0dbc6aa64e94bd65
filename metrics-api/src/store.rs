//! Reading windows from Postgres.

use chrono::{DateTime, Utc};
use infra::rollups::Kept;
use metrics_core::pricing::Tokens;
use metrics_core::tiles::Level;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgPool, Row};

use crate::query::MetricsQuery;
use crate::rollup::{rate, AtPrices, CostByType, Figures, MetricsItem, Window};

/// The stored windows themselves, newest first (the original API's answer). Every figure is
/// read as the processor wrote it; no histogram is decoded.
pub async fn latest(
    pool: &PgPool,
    tenant: &str,
    q: &MetricsQuery,
    prices: Option<AtPrices<'_>>,
) -> Result<Vec<MetricsItem>, sqlx::Error> {
    // Only the filters given, so each shape gets a plain plan Postgres can cache: the
    // (tenant_id, window_start DESC) index read backwards, stopping after `limit` rows.
    let mut sql = String::from(
        "SELECT route, model, window_start, window_end, requests, errors, timeouts,
                avg_latency_ms, p50_latency_ms, p95_latency_ms, p99_latency_ms, max_latency_ms,
                avg_ttft_ms, avg_prompt_tokens, avg_completion_tokens, prompt_tokens,
                completion_tokens, cached_prompt_tokens, cache_creation_tokens, reasoning_tokens,
                estimated_cost_usd, unpriced, providers, error_types, cost_input_nanos,
                cost_cached_input_nanos, cost_cache_write_nanos, cost_output_nanos,
                cost_reasoning_nanos, completed, unpriced_tokens
         FROM llm_metrics WHERE tenant_id = $1",
    );
    let mut n = 1;
    for (given, clause) in [
        (q.route.is_some(), "route ="),
        (q.model.is_some(), "model ="),
        (q.from.is_some(), "window_start >="),
        (q.to.is_some(), "window_start <"),
    ] {
        if given {
            n += 1;
            sql.push_str(&format!(" AND {clause} ${n}"));
        }
    }
    sql.push_str(&format!(
        " ORDER BY window_start DESC, route, model LIMIT ${}",
        n + 1
    ));
    let mut query = sqlx::query(&sql).bind(tenant);
    if let Some(route) = &q.route {
        query = query.bind(route);
    }
    if let Some(model) = &q.model {
        query = query.bind(model);
    }
    if let Some(from) = q.from {
        query = query.bind(from);
    }
    if let Some(to) = q.to {
        query = query.bind(to);
    }
    let rows = query.bind(q.limit).fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            let requests: i64 = r.try_get("requests")?;
            let errors: i64 = r.try_get("errors")?;
            let timeouts: i64 = r.try_get("timeouts")?;
            let prompt_tokens: i64 = r.try_get("prompt_tokens")?;
            let completion_tokens: i64 = r.try_get("completion_tokens")?;
            let count = |v: i64| u64::try_from(v).unwrap_or(0);
            let model: String = r.try_get("model")?;
            let (mut cost_usd, mut parts, mut unpriced, mut unpriced_tokens) = (
                r.try_get("estimated_cost_usd")?,
                infra::db::cost_parts(r)?,
                r.try_get("unpriced")?,
                r.try_get("unpriced_tokens")?,
            );
            if let Some(AtPrices { table, at }) = prices {
                let tokens = Tokens {
                    prompt: count(prompt_tokens),
                    cached: count(r.try_get("cached_prompt_tokens")?),
                    cache_write: count(r.try_get("cache_creation_tokens")?),
                    completion: count(completion_tokens),
                    reasoning: count(r.try_get("reasoning_tokens")?),
                };
                let priced = table.window_cost(&model, at, tokens, count(r.try_get("completed")?));
                (cost_usd, parts, unpriced, unpriced_tokens) = (
                    priced.cost.nanos() as f64 / 1e9,
                    priced.cost.parts,
                    infra::db::i64_of(priced.unpriced),
                    infra::db::i64_of(priced.unpriced_tokens),
                );
            }
            Ok(MetricsItem {
                tenant_id: tenant.to_owned(),
                route: Some(r.try_get("route")?),
                model: Some(model),
                window_start: r.try_get("window_start")?,
                window_end: r.try_get("window_end")?,
                figures: Figures {
                    requests,
                    errors,
                    timeouts,
                    error_rate: rate(count(errors), count(requests)),
                    timeout_rate: rate(count(timeouts), count(requests)),
                    avg_latency_ms: r.try_get("avg_latency_ms")?,
                    p50_latency_ms: r.try_get("p50_latency_ms")?,
                    p95_latency_ms: r.try_get("p95_latency_ms")?,
                    p99_latency_ms: r.try_get("p99_latency_ms")?,
                    prompt_tokens,
                    completion_tokens,
                    total_tokens: prompt_tokens.saturating_add(completion_tokens),
                    cached_prompt_tokens: r.try_get("cached_prompt_tokens")?,
                    cache_creation_tokens: r.try_get("cache_creation_tokens")?,
                    reasoning_tokens: r.try_get("reasoning_tokens")?,
                    estimated_cost_usd: cost_usd,
                    cost_by_type_usd: CostByType(parts),
                    unpriced,
                    unpriced_tokens,
                    providers: r.try_get::<Json<_>, _>("providers")?.0,
                    error_types: r.try_get::<Json<_>, _>("error_types")?.0,
                },
                max_latency_ms: r.try_get("max_latency_ms")?,
                avg_ttft_ms: r.try_get("avg_ttft_ms")?,
                avg_prompt_tokens: r.try_get("avg_prompt_tokens")?,
                avg_completion_tokens: r.try_get("avg_completion_tokens")?,
            })
        })
        .collect()
}

/// What a range query reads: the tenant's windows of `[from, to)`, as roll-up rows (five
/// minutes, hours, days; no coarser than `coarsest`) wherever whole buckets fit and minute
/// rows at the edges. Each row is kept as read and added to its bucket without building a
/// histogram for it. Roll-up rows keep apart what `kept` asks for; the rest is merged (see
/// [`infra::rollups::range_rows`]).
#[allow(clippy::too_many_arguments)]
pub async fn windows(
    pool: &PgPool,
    tenant: &str,
    route: Option<&str>,
    model: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    coarsest: Level,
    kept: Kept,
) -> Result<Vec<Window<PgRow>>, sqlx::Error> {
    let rows =
        infra::rollups::range_rows(pool, tenant, route, model, from, to, coarsest, kept).await?;
    rows.into_iter()
        .map(|r| {
            Ok(Window {
                route: r.try_get("route")?,
                model: r.try_get("model")?,
                start: r.try_get("window_start")?,
                aggregate: r,
            })
        })
        .collect()
}

pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}
