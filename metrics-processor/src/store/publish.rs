//! Window rows to `llm.metrics`, newest revision last.
//!
//! Every merge of a row raises its revision. A consumer that keeps the last record per key (a
//! compacted topic, a materialised view) must end with the newest one, also when two
//! instances publish during a handover. So rows are published while locked: a merge of the
//! same row waits until its current revision is delivered and marked, and another publisher
//! skips rows that are being published. A row whose publishing was cut short (a crash, the
//! broker away) stays unpublished, and whichever instance publishes next sends it.

use super::{Store, StoreError, COLUMNS};
use crate::output::MetricRow;

impl Store {
    /// Hands up to `limit` rows whose latest revision `llm.metrics` has not seen to `send`,
    /// which returns once the broker has them; then marks them published. Returns how many.
    pub async fn publish(
        &self,
        limit: i64,
        send: impl FnOnce(&[MetricRow]) -> Result<(), String>,
    ) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM llm_metrics
             WHERE published_at IS DISTINCT FROM updated_at
             ORDER BY updated_at LIMIT $1
             FOR UPDATE SKIP LOCKED"
        ))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let rows = rows
            .iter()
            .map(MetricRow::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if rows.is_empty() {
            return Ok(0);
        }
        send(&rows).map_err(StoreError::Publish)?;
        for row in &rows {
            sqlx::query(
                "UPDATE llm_metrics SET published_at = updated_at
                 WHERE tenant_id = $1 AND route = $2 AND model = $3 AND window_start = $4",
            )
            .bind(&row.tenant_id)
            .bind(&row.route)
            .bind(&row.model)
            .bind(row.window_start)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }
}
