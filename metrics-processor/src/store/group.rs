//! What every instance reads about the whole group: the stored positions of all input
//! partitions, and the input layout the group's state was built on.

use sqlx::Row;

use super::{Store, StoreError};
use crate::domain::offsets::Input;

/// One input partition's stored position, as the group wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredPosition {
    pub input: Input,
    pub partition: i32,
    /// `None` until a commit wrote it (a claim alone stores -1).
    pub position: Option<i64>,
    pub epoch: i64,
}

impl Store {
    /// Every stored position of the group's two input topics.
    pub async fn positions(&self) -> Result<Vec<StoredPosition>, StoreError> {
        let rows = sqlx::query(
            "SELECT topic, partition, position, epoch FROM processor_positions
             WHERE consumer_group = $1 AND topic = ANY($2)",
        )
        .bind(&self.group)
        .bind([&self.requests, &self.responses])
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let position: i64 = row.try_get("position")?;
                Ok(StoredPosition {
                    input: self.input(row.try_get::<&str, _>("topic")?),
                    partition: row.try_get("partition")?,
                    position: (position >= 0).then_some(position),
                    epoch: row.try_get("epoch")?,
                })
            })
            .collect()
    }

    /// Records `partitions` as the input layout of the group if none is stored yet, and
    /// returns the stored count when it differs.
    pub async fn check_layout(&self, partitions: i32) -> Result<Option<i32>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut changed = None;
        for topic in [&self.requests, &self.responses] {
            let stored: i32 = sqlx::query_scalar(
                "INSERT INTO processor_layout (consumer_group, topic, partitions)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (consumer_group, topic)
                 DO UPDATE SET partitions = processor_layout.partitions
                 RETURNING partitions",
            )
            .bind(&self.group)
            .bind(topic)
            .bind(partitions)
            .fetch_one(&mut *tx)
            .await?;
            if stored != partitions {
                changed = Some(stored);
            }
        }
        tx.commit().await?;
        Ok(changed)
    }
}
