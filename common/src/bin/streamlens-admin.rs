//! Operator commands.
//!
//! ```text
//! streamlens-admin migrate   apply the database migrations (POSTGRES_DSN / DATABASE_URL)
//! streamlens-admin topics    create the topics if missing and check co-partitioning
//! ```

use std::time::Duration;

use anyhow::{bail, Context};
use common::kafka::{KafkaSettings, Topics};
use common::settings::Env;

const USAGE: &str = "usage: streamlens-admin <migrate|topics>";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init(false);
    let command = std::env::args().nth(1).unwrap_or_default();
    let mut env = Env::process();
    match command.as_str() {
        "migrate" => {
            let dsn = common::db::dsn_from_env(&mut env);
            env.finish()?;
            let pool = common::db::connect(&dsn, 1)
                .await
                .context("cannot connect to Postgres (POSTGRES_DSN / DATABASE_URL)")?;
            common::db::migrate(&pool)
                .await
                .context("migrations failed")?;
            tracing::info!("migrations applied");
        }
        "topics" => {
            let kafka = KafkaSettings::from_env(&mut env);
            let topics = Topics::from_env(&mut env);
            env.finish()?;
            let all = [
                topics.requests.as_str(),
                &topics.responses,
                &topics.metrics,
                &topics.dlq,
            ];
            kafka
                .ensure_topics(&all, &topics.inputs(), Duration::from_secs(10))
                .await
                .with_context(|| format!("topic set-up on {} failed", kafka.brokers))?;
            tracing::info!(
                partitions = kafka.partitions,
                "topics ready: {}",
                all.join(", ")
            );
        }
        _ => bail!(USAGE),
    }
    Ok(())
}
