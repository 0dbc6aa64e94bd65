//! Service level objectives per tenant, their error budgets and burn rates.
//!
//! Each objective has two burn-rate alerts, *page* and *ticket* (see `metrics_core::slo`),
//! stored as alert rules of its own: they are evaluated on every commit as every rule is
//! (`crate::alerts`), and their transitions are recorded, published and delivered the same way,
//! once each.

use chrono::{DateTime, TimeDelta, Utc};
use metrics_core::alerts::{State, Verdict};
use metrics_core::slo::{self, Calls, Indicator, Objective, Severity, Slo};
use metrics_core::tiles::Level;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, Row, Transaction};
use utoipa::ToSchema;

use crate::db::RowError;

/// An objective as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct StoredSlo {
    pub id: i64,
    pub tenant_id: String,
    pub name: String,
    /// `availability` or `latency`.
    pub indicator: String,
    /// The share of calls that must be good over 30 days.
    pub target: f64,
    /// For `latency`: good calls answer in under this many milliseconds.
    pub threshold_ms: Option<i64>,
    /// Fewer calls in an alert's short window: no verdict.
    pub min_requests: i64,
    pub route: Option<String>,
    pub model: Option<String>,
    pub webhook_url: Option<String>,
    pub created_at: DateTime<Utc>,
}

const SLO_COLUMNS: &str = "id, tenant_id, name, indicator, target, threshold_ms, min_requests, \
    route, model, webhook_url, created_at";

impl StoredSlo {
    fn of(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            name: row.try_get("name")?,
            indicator: row.try_get("indicator")?,
            target: row.try_get("target")?,
            threshold_ms: row.try_get("threshold_ms")?,
            min_requests: row.try_get("min_requests")?,
            route: row.try_get("route")?,
            model: row.try_get("model")?,
            webhook_url: row.try_get("webhook_url")?,
            created_at: row.try_get("created_at")?,
        })
    }

    pub fn objective(&self) -> Objective {
        let indicator = match self.threshold_ms {
            Some(ms) => Indicator::Latency {
                under_ms: u64::try_from(ms).unwrap_or(0),
            },
            None => Indicator::Availability,
        };
        Objective {
            indicator,
            target: self.target,
        }
    }

    /// Good and total calls of `[from, to)`.
    async fn calls(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        coarsest: Level,
    ) -> Result<Calls, RowError> {
        let window = crate::rollups::merged(
            &mut **tx,
            &self.tenant_id,
            self.route.as_deref(),
            self.model.as_deref(),
            from,
            to,
            coarsest,
        )
        .await?;
        Ok(self.objective().indicator.calls(&window))
    }
}

/// Stores an objective of `tenant` with its two burn-rate alerts; the second value is the
/// tenant's webhook signing secret when this call created it.
pub async fn create_slo(
    pool: &PgPool,
    tenant: &str,
    slo: &Slo,
) -> Result<(StoredSlo, Option<String>), sqlx::Error> {
    let threshold_ms = match slo.objective.indicator {
        Indicator::Latency { under_ms } => Some(i64::try_from(under_ms).unwrap_or(i64::MAX)),
        Indicator::Availability => None,
    };
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!(
        "INSERT INTO slos (tenant_id, name, indicator, target, threshold_ms, min_requests, route,
             model, webhook_url)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {SLO_COLUMNS}"
    ))
    .bind(tenant)
    .bind(&slo.name)
    .bind(if threshold_ms.is_some() {
        "latency"
    } else {
        "availability"
    })
    .bind(slo.objective.target)
    .bind(threshold_ms)
    .bind(i64::try_from(slo.min_requests).unwrap_or(i64::MAX))
    .bind(&slo.route)
    .bind(&slo.model)
    .bind(&slo.webhook_url)
    .fetch_one(&mut *tx)
    .await?;
    let stored = StoredSlo::of(&row)?;
    for severity in Severity::ALL {
        let (long, _) = severity.windows();
        sqlx::query(
            "INSERT INTO alert_rules (tenant_id, name, metric, op, threshold, window_minutes,
                 min_requests, route, model, webhook_url, slo_id, severity)
             VALUES ($1, $2, 'burn_rate', '>', $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(tenant)
        .bind(format!("{}: {}", stored.name, severity.name()))
        .bind(severity.factor())
        .bind(i32::try_from(long).unwrap_or(i32::MAX))
        .bind(stored.min_requests)
        .bind(&stored.route)
        .bind(&stored.model)
        .bind(&stored.webhook_url)
        .bind(stored.id)
        .bind(severity.name())
        .execute(&mut *tx)
        .await?;
    }
    let created = crate::alerts::ensure_secret(&mut tx, tenant).await?;
    tx.commit().await?;
    Ok((stored, created))
}

/// The tenant's objectives, oldest first.
pub async fn slos(pool: &PgPool, tenant: &str) -> Result<Vec<StoredSlo>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {SLO_COLUMNS} FROM slos WHERE tenant_id = $1 AND deleted_at IS NULL ORDER BY id"
    ))
    .bind(tenant)
    .fetch_all(pool)
    .await?
    .iter()
    .map(StoredSlo::of)
    .collect()
}

/// One objective of the tenant, if it has it.
pub async fn slo(pool: &PgPool, tenant: &str, id: i64) -> Result<Option<StoredSlo>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {SLO_COLUMNS} FROM slos WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL"
    ))
    .bind(id)
    .bind(tenant)
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(StoredSlo::of)
    .transpose()
}

/// Stops an objective of the tenant and its alerts; false when it has no such objective.
pub async fn delete_slo(pool: &PgPool, tenant: &str, id: i64) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "UPDATE slos SET deleted_at = now()
         WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(tenant)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE alert_rules SET deleted_at = now() WHERE slo_id = $1 AND deleted_at IS NULL",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// Judges one of an objective's burn-rate alerts over its windows ending at `end`, inside the
/// transaction that holds the alert's row lock.
pub(crate) async fn evaluate_alert(
    tx: &mut Transaction<'_, Postgres>,
    slo_id: i64,
    severity: Severity,
    end: DateTime<Utc>,
    coarsest: Level,
    before: State,
) -> Result<Verdict, RowError> {
    let row = sqlx::query(&format!("SELECT {SLO_COLUMNS} FROM slos WHERE id = $1"))
        .bind(slo_id)
        .fetch_one(&mut **tx)
        .await?;
    let slo = StoredSlo::of(&row)?;
    let (long, short) = severity.windows();
    let minutes = |m: u32| end - TimeDelta::minutes(i64::from(m));
    let long = slo.calls(tx, minutes(long), end, coarsest).await?;
    let short = slo.calls(tx, minutes(short), end, coarsest).await?;
    Ok(slo::evaluate_burn(
        &slo.objective(),
        severity,
        long,
        short,
        u64::try_from(slo.min_requests).unwrap_or(1),
        before,
    ))
}

/// How fast one window spends the budget.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Burn {
    /// `5m`, `30m`, `1h`, `6h` or `30d`.
    pub window: String,
    pub good: u64,
    pub total: u64,
    /// The bad share over the budget: 1 spends the budget in exactly 30 days.
    pub burn_rate: f64,
}

/// One of the objective's alerts as it stands.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AlertStatus {
    pub severity: Severity,
    /// `ok` or `firing`.
    pub state: State,
    /// The burn rate both windows reached at the last verdict.
    pub value: Option<f64>,
    /// The burn rate that fires it.
    pub threshold: f64,
    /// Its long and short window, e.g. `1h` and `5m`.
    pub windows: [String; 2],
    /// The end of the windows last evaluated.
    pub evaluated_end: Option<DateTime<Utc>>,
}

/// An objective with its budget and burn rates, as `GET /v1/slos/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Status {
    pub slo: StoredSlo,
    /// The end of every window below: the end of the current minute.
    pub at: DateTime<Utc>,
    /// The last 30 days' good and total calls.
    pub period: Calls,
    /// The share of the last 30 days' budget left: 1 untouched, 0 spent, below 0 overspent.
    pub budget_left: f64,
    pub burn_rates: Vec<Burn>,
    pub alerts: Vec<AlertStatus>,
}

/// Minutes as a window's name: `5m`, `1h`, `30d`.
fn span(minutes: u32) -> String {
    match minutes {
        m if m % (24 * 60) == 0 => format!("{}d", m / (24 * 60)),
        m if m % 60 == 0 => format!("{}h", m / 60),
        m => format!("{m}m"),
    }
}

/// The objective's budget over the 30 days ending at `at`, and its burn rates.
pub async fn status(
    pool: &PgPool,
    slo: StoredSlo,
    at: DateTime<Utc>,
    coarsest: Level,
) -> Result<Status, RowError> {
    let objective = slo.objective();
    // One snapshot for every window, so they agree with each other.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let mut burn_rates = Vec::new();
    // The last window is the whole period.
    for minutes in [5, 30, 60, 360, slo::PERIOD_MINUTES] {
        let from = at - TimeDelta::minutes(i64::from(minutes));
        let calls = slo.calls(&mut tx, from, at, coarsest).await?;
        burn_rates.push(Burn {
            window: span(minutes),
            good: calls.good,
            total: calls.total,
            burn_rate: objective.burn_rate(calls),
        });
    }
    let alerts = sqlx::query(
        "SELECT severity, state, value, threshold, evaluated_end FROM alert_rules
         WHERE slo_id = $1 AND deleted_at IS NULL ORDER BY id",
    )
    .bind(slo.id)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|row| -> Result<AlertStatus, sqlx::Error> {
        let severity =
            Severity::parse(&row.try_get::<String, _>("severity")?).unwrap_or(Severity::Page);
        let (long, short) = severity.windows();
        Ok(AlertStatus {
            severity,
            state: State::parse(&row.try_get::<String, _>("state")?).unwrap_or(State::Ok),
            value: row.try_get("value")?,
            threshold: row.try_get("threshold")?,
            windows: [span(long), span(short)],
            evaluated_end: row.try_get("evaluated_end")?,
        })
    })
    .collect::<Result<_, _>>()?;
    tx.commit().await?;
    let period = burn_rates.last().map_or(Calls::default(), |b| Calls {
        good: b.good,
        total: b.total,
    });
    Ok(Status {
        budget_left: objective.budget_left(period),
        period,
        at,
        slo,
        burn_rates,
        alerts,
    })
}

#[cfg(test)]
mod tests {
    use super::span;

    #[test]
    fn windows_are_named_in_their_largest_whole_unit() {
        assert_eq!(span(5), "5m");
        assert_eq!(span(90), "90m");
        assert_eq!(span(360), "6h");
        assert_eq!(span(43_200), "30d");
    }
}
