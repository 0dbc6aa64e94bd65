//! Alert rules, their evaluation against the stored windows, and the transitions they make.
//!
//! A rule is evaluated over the merged minutes of its window ending at the newest minute closed
//! on every input partition ([`closed_until`]), in a transaction that locks the rule's row, so
//! instances evaluating the same rule at once take turns, and a transition is recorded once,
//! as an `alert_events` row written with the state it leads to. Delivery reads those rows
//! afterwards, so a crash between the two loses nothing. `llm.alerts` and the webhook get each
//! transition at least once, with its `id` to tell a repeat apart (a crash after the broker
//! or the receiver took it and before it was marked).

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use hmac::{Hmac, Mac};
use metrics_core::alerts::{Condition, Metric, Op, Rule, State};
use metrics_core::slo::Severity;
use metrics_core::tiles::Level;
use serde::Serialize;
use sha2::Sha256;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use utoipa::ToSchema;

use crate::db::RowError;

/// A rule as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct StoredRule {
    pub id: i64,
    pub tenant_id: String,
    pub name: String,
    pub metric: Metric,
    pub op: String,
    pub threshold: f64,
    /// Minutes.
    pub window_minutes: i32,
    pub min_requests: i64,
    pub route: Option<String>,
    pub model: Option<String>,
    pub webhook_url: Option<String>,
    /// `ok` or `firing`.
    pub state: State,
    /// The value at the last evaluation that gave a verdict.
    pub value: Option<f64>,
    /// The end of the window last evaluated.
    pub evaluated_end: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

const RULE_COLUMNS: &str = "id, tenant_id, name, metric, op, threshold, window_minutes, \
    min_requests, route, model, webhook_url, state, value, evaluated_end, created_at";

impl StoredRule {
    fn of(row: &PgRow) -> Result<Self, sqlx::Error> {
        let text = |c: &str| row.try_get::<String, _>(c);
        let invalid = |c: &str| sqlx::Error::ColumnDecode {
            index: c.into(),
            source: "not a known value".into(),
        };
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: text("tenant_id")?,
            name: text("name")?,
            metric: Metric::parse(&text("metric")?).ok_or_else(|| invalid("metric"))?,
            op: text("op")?,
            threshold: row.try_get("threshold")?,
            window_minutes: row.try_get("window_minutes")?,
            min_requests: row.try_get("min_requests")?,
            route: row.try_get("route")?,
            model: row.try_get("model")?,
            webhook_url: row.try_get("webhook_url")?,
            state: State::parse(&text("state")?).ok_or_else(|| invalid("state"))?,
            value: row.try_get("value")?,
            evaluated_end: row.try_get("evaluated_end")?,
            created_at: row.try_get("created_at")?,
        })
    }

    fn condition(&self) -> Condition {
        Condition {
            metric: self.metric,
            op: if self.op == "<" { Op::Below } else { Op::Above },
            threshold: self.threshold,
            min_requests: u64::try_from(self.min_requests).unwrap_or(0),
        }
    }
}

/// Stores a rule of `tenant`; the second value is the tenant's webhook signing secret when
/// this call created it (its first rule), the only time it is shown.
pub async fn create_rule(
    pool: &PgPool,
    tenant: &str,
    rule: &Rule,
) -> Result<(StoredRule, Option<String>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!(
        "INSERT INTO alert_rules (tenant_id, name, metric, op, threshold, window_minutes,
             min_requests, route, model, webhook_url)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {RULE_COLUMNS}"
    ))
    .bind(tenant)
    .bind(&rule.name)
    .bind(rule.condition.metric.name())
    .bind(rule.condition.op.symbol())
    .bind(rule.condition.threshold)
    .bind(i32::try_from(rule.window_minutes).unwrap_or(i32::MAX))
    .bind(i64::try_from(rule.condition.min_requests).unwrap_or(i64::MAX))
    .bind(&rule.route)
    .bind(&rule.model)
    .bind(&rule.webhook_url)
    .fetch_one(&mut *tx)
    .await?;
    let created = ensure_secret(&mut tx, tenant).await?;
    tx.commit().await?;
    Ok((StoredRule::of(&row)?, created))
}

/// Gives `tenant` its webhook signing secret if it has none yet; returns it when it did.
pub(crate) async fn ensure_secret(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &str,
) -> Result<Option<String>, sqlx::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("the operating system's random source works");
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    sqlx::query_scalar(
        "INSERT INTO alert_secrets (tenant_id, secret) VALUES ($1, $2)
         ON CONFLICT (tenant_id) DO NOTHING RETURNING secret",
    )
    .bind(tenant)
    .bind(&secret)
    .fetch_optional(&mut **tx)
    .await
}

/// The tenant's rules, oldest first (not the burn-rate alerts of its objectives).
pub async fn rules(pool: &PgPool, tenant: &str) -> Result<Vec<StoredRule>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {RULE_COLUMNS} FROM alert_rules
         WHERE tenant_id = $1 AND deleted_at IS NULL AND slo_id IS NULL ORDER BY id"
    ))
    .bind(tenant)
    .fetch_all(pool)
    .await?
    .iter()
    .map(StoredRule::of)
    .collect()
}

/// Stops evaluating a rule of the tenant; false when it has no such rule (an objective's
/// alerts go with the objective).
pub async fn delete_rule(pool: &PgPool, tenant: &str, id: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE alert_rules SET deleted_at = now()
         WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL AND slo_id IS NULL",
    )
    .bind(id)
    .bind(tenant)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A transition, as stored, published to `llm.alerts` and POSTed to a webhook.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AlertEvent {
    pub id: i64,
    pub tenant_id: String,
    pub rule_id: i64,
    /// The rule's name; for an objective's alert, the objective's name and the severity.
    pub rule: String,
    /// The rule's metric, or `burn_rate` for an objective's alert.
    pub metric: String,
    pub op: String,
    /// `firing` or `resolved`.
    pub state: String,
    pub value: f64,
    pub threshold: f64,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub route: Option<String>,
    pub model: Option<String>,
    /// The objective whose burn-rate alert this is (`value` and `threshold` are burn rates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slo_id: Option<i64>,
    /// `page` or `ticket`, for an objective's alert.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    pub created_at: DateTime<Utc>,
}

const EVENT_COLUMNS: &str = "e.id, e.tenant_id, e.rule_id, r.name, r.metric, r.op, e.state, \
    e.value, e.threshold, e.window_start, e.window_end, r.route, r.model, r.slo_id, r.severity, \
    e.created_at";

impl AlertEvent {
    fn of(row: &PgRow) -> Result<Self, sqlx::Error> {
        let severity: Option<String> = row.try_get("severity")?;
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            rule_id: row.try_get("rule_id")?,
            rule: row.try_get("name")?,
            metric: row.try_get("metric")?,
            op: row.try_get("op")?,
            state: row.try_get("state")?,
            value: row.try_get("value")?,
            threshold: row.try_get("threshold")?,
            window_start: row.try_get("window_start")?,
            window_end: row.try_get("window_end")?,
            route: row.try_get("route")?,
            model: row.try_get("model")?,
            slo_id: row.try_get("slo_id")?,
            severity: severity.as_deref().and_then(Severity::parse),
            created_at: row.try_get("created_at")?,
        })
    }

    /// The `llm.alerts` record key.
    pub fn key(&self) -> String {
        format!("{}|{}", self.tenant_id, self.rule_id)
    }
}

/// The tenant's transitions created in `[from, to)`, newest first, optionally only one kind.
pub async fn events(
    pool: &PgPool,
    tenant: &str,
    state: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<AlertEvent>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM alert_events e JOIN alert_rules r ON r.id = e.rule_id
         WHERE e.tenant_id = $1 AND ($2::TEXT IS NULL OR e.state = $2)
           AND e.created_at >= $3 AND e.created_at < $4
         ORDER BY e.id DESC LIMIT $5"
    ))
    .bind(tenant)
    .bind(state)
    .bind(from)
    .bind(to)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(AlertEvent::of)
    .collect()
}

/// What evaluating a tenant's rules did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evaluated {
    pub rules: usize,
    pub transitions: usize,
}

/// How long a partition no instance has written positions for keeps holding
/// [`closed_until`] back: longer than any rebalance, so only a partition that stopped
/// existing (or a group left without instances) is passed over.
pub const STALE_PARTITION: TimeDelta = TimeDelta::minutes(10);

/// The end of the newest minute that every input partition of the consumer `group` has
/// closed: the lowest watermark its instances last wrote with their positions, less the
/// window `grace`, down to the minute. A minute before it is whole in Postgres (late calls
/// aside, which merge into it later); one after it may still lack a partition's part. `None`
/// before any partition has a watermark.
pub async fn closed_until(
    pool: &PgPool,
    group: &str,
    grace: TimeDelta,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    // A partition without a watermark has never had a record to write: it holds nothing
    // back (were it to, one partition that no call ever hashed to would stop every rule).
    let lowest: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT min(watermark) FROM processor_positions
         WHERE consumer_group = $1 AND updated_at > now() - make_interval(secs => $2)",
    )
    .bind(group)
    .bind(STALE_PARTITION.num_seconds() as f64)
    .fetch_one(pool)
    .await?;
    Ok(lowest.and_then(|w| (w - grace).duration_trunc(TimeDelta::minutes(1)).ok()))
}

/// The tenants with rules (or objectives) to evaluate.
pub async fn tenants_with_rules(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT tenant_id FROM alert_rules WHERE deleted_at IS NULL ORDER BY tenant_id",
    )
    .fetch_all(pool)
    .await
}

/// Evaluates every rule of `tenant` over its window ending at `end` (the end of the newest
/// minute closed on every partition, see [`closed_until`]), reading roll-ups no coarser than
/// `coarsest`.
pub async fn evaluate_tenant(
    pool: &PgPool,
    tenant: &str,
    end: DateTime<Utc>,
    coarsest: Level,
) -> Result<Evaluated, RowError> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM alert_rules WHERE tenant_id = $1 AND deleted_at IS NULL ORDER BY id",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    let mut done = Evaluated {
        rules: ids.len(),
        transitions: 0,
    };
    for id in ids {
        done.transitions += usize::from(evaluate_rule(pool, id, end, coarsest).await?);
    }
    Ok(done)
}

/// Evaluates one rule at `end` under its row lock; true when it made a transition.
async fn evaluate_rule(
    pool: &PgPool,
    id: i64,
    end: DateTime<Utc>,
    coarsest: Level,
) -> Result<bool, RowError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!(
        "SELECT {RULE_COLUMNS}, slo_id, severity FROM alert_rules
         WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    // A lagging instance's older window never moves a rule back in time; the same end again
    // is a late correction of the window, and counts.
    let evaluated_end: Option<DateTime<Utc>> = row.try_get("evaluated_end")?;
    if evaluated_end.is_some_and(|done| done > end) {
        return Ok(false);
    }
    let tenant: String = row.try_get("tenant_id")?;
    let before = State::parse(&row.try_get::<String, _>("state")?).unwrap_or(State::Ok);
    let window_minutes: i32 = row.try_get("window_minutes")?;
    let start = end - TimeDelta::minutes(i64::from(window_minutes));
    // Read after the lock: every commit that finished before it is in.
    let slo: Option<i64> = row.try_get("slo_id")?;
    let verdict = match slo {
        None => {
            let rule = StoredRule::of(&row)?;
            let window = crate::rollups::merged(
                &mut *tx,
                &tenant,
                rule.route.as_deref(),
                rule.model.as_deref(),
                start,
                end,
                coarsest,
            )
            .await?;
            rule.condition().evaluate(&window, before)
        }
        Some(slo) => {
            let severity: String = row.try_get("severity")?;
            let severity = Severity::parse(&severity).unwrap_or(Severity::Page);
            crate::slos::evaluate_alert(&mut tx, slo, severity, end, coarsest, before).await?
        }
    };
    sqlx::query(
        "UPDATE alert_rules SET state = $2, value = coalesce($3, value), evaluated_end = $4
         WHERE id = $1",
    )
    .bind(id)
    .bind(verdict.state.name())
    .bind(verdict.value)
    .bind(end)
    .execute(&mut *tx)
    .await?;
    if let (Some(to), Some(value)) = (verdict.transition, verdict.value) {
        let threshold: f64 = row.try_get("threshold")?;
        let webhook: Option<String> = row.try_get("webhook_url")?;
        sqlx::query(
            "INSERT INTO alert_events (tenant_id, rule_id, state, value, threshold, window_start,
                 window_end, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $8 THEN now() END)",
        )
        .bind(&tenant)
        .bind(id)
        .bind(match to {
            State::Firing => "firing",
            State::Ok => "resolved",
        })
        .bind(value)
        .bind(threshold)
        .bind(start)
        .bind(end)
        .bind(webhook.is_some())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(verdict.transition.is_some())
}

/// Hands up to `limit` transitions not yet on `llm.alerts` to `send`, oldest first, which
/// returns once the broker has them; then marks them published. Returns how many.
pub async fn publish<F, Fut>(pool: &PgPool, limit: i64, send: F) -> Result<usize, sqlx::Error>
where
    F: FnOnce(Vec<AlertEvent>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut tx = pool.begin().await?;
    let events: Vec<AlertEvent> = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM alert_events e JOIN alert_rules r ON r.id = e.rule_id
         WHERE e.published_at IS NULL ORDER BY e.id LIMIT $1 FOR UPDATE OF e SKIP LOCKED"
    ))
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(AlertEvent::of)
    .collect::<Result<_, _>>()?;
    if events.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    if let Err(e) = send(events).await {
        tracing::warn!(error = %e, "alert events not yet on the broker; will send again");
        return Ok(0);
    }
    sqlx::query("UPDATE alert_events SET published_at = now() WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ids.len())
}

/// A webhook delivery due now: the event, where to, and the tenant's signing secret.
#[derive(Debug, Clone)]
pub struct Due {
    pub event: AlertEvent,
    pub url: String,
    pub secret: String,
    pub attempts: i32,
}

/// How a delivery attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// Failed; tried again later, or given up after [`MAX_ATTEMPTS`].
    Failed(String),
    /// Not attempted and never to be (the URL is no longer allowed): given up at once.
    Refused(String),
}

/// Attempts before a webhook delivery is given up and dead-lettered.
pub const MAX_ATTEMPTS: i32 = 8;

/// The wait before attempt `n + 1`: 1 s, 2 s, 4 s … at most 5 minutes.
pub fn backoff(attempts: i32) -> TimeDelta {
    TimeDelta::seconds(1_i64 << attempts.clamp(0, 9)).min(TimeDelta::minutes(5))
}

/// Takes the oldest webhook delivery that is due, if any, and hands it to `deliver` under its
/// row lock (other instances skip it). A rule's transitions go out in order: one waits while
/// an earlier one of its rule is undelivered. Returns the delivery and what became of it:
/// `Some(true)` delivered, `Some(false)` failed for good (dead-lettered), `None` nothing due
/// or retried later.
pub async fn deliver_next<F, Fut>(
    pool: &PgPool,
    deliver: F,
) -> Result<Option<(Due, bool)>, sqlx::Error>
where
    F: FnOnce(Due) -> Fut,
    Fut: std::future::Future<Output = (Due, Delivery)>,
{
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS}, r.webhook_url, s.secret, e.attempts
         FROM alert_events e JOIN alert_rules r ON r.id = e.rule_id
              JOIN alert_secrets s ON s.tenant_id = e.tenant_id
         WHERE e.delivered_at IS NULL AND e.dead_at IS NULL AND e.next_attempt_at <= now()
           AND r.webhook_url IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM alert_events p
                           WHERE p.rule_id = e.rule_id AND p.id < e.id AND p.delivered_at IS NULL
                             AND p.dead_at IS NULL AND p.next_attempt_at IS NOT NULL)
         ORDER BY e.id LIMIT 1 FOR UPDATE OF e SKIP LOCKED"
    ))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let due = Due {
        event: AlertEvent::of(&row)?,
        url: row.try_get("webhook_url")?,
        secret: row.try_get("secret")?,
        attempts: row.try_get("attempts")?,
    };
    let (due, outcome) = deliver(due).await;
    let attempts = due.attempts + 1;
    let result = match &outcome {
        Delivery::Delivered => {
            sqlx::query(
                "UPDATE alert_events SET delivered_at = now(), attempts = $2, last_error = NULL
                 WHERE id = $1",
            )
            .bind(due.event.id)
            .bind(attempts)
            .execute(&mut *tx)
            .await?;
            Some(true)
        }
        Delivery::Refused(why) => give_up(&mut tx, due.event.id, attempts, why).await?,
        Delivery::Failed(why) if attempts >= MAX_ATTEMPTS => {
            give_up(&mut tx, due.event.id, attempts, why).await?
        }
        Delivery::Failed(why) => {
            sqlx::query(
                "UPDATE alert_events SET attempts = $2, last_error = $3,
                     next_attempt_at = now() + make_interval(secs => $4)
                 WHERE id = $1",
            )
            .bind(due.event.id)
            .bind(attempts)
            .bind(why)
            .bind(backoff(attempts).num_seconds() as f64)
            .execute(&mut *tx)
            .await?;
            None
        }
    };
    tx.commit().await?;
    Ok(result.map(|delivered| (due, delivered)))
}

/// Marks a delivery given up (dead-lettered by the caller); `Some(false)` for
/// [`deliver_next`].
async fn give_up(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: i64,
    attempts: i32,
    why: &str,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query(
        "UPDATE alert_events SET dead_at = now(), attempts = $2, last_error = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(attempts)
    .bind(why)
    .execute(&mut **tx)
    .await?;
    Ok(Some(false))
}

/// `sha256=<hex>`: the HMAC-SHA256 of `body` under `secret`, as `X-StreamLens-Signature`
/// carries it.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any size");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn retries_back_off_to_five_minutes() {
        let waits: Vec<i64> = (1..=MAX_ATTEMPTS + 3)
            .map(|n| backoff(n).num_seconds())
            .collect();
        assert_eq!(waits[..4], [2, 4, 8, 16]);
        assert_eq!(*waits.last().unwrap(), 300);
    }
}
