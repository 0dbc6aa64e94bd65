//! Operator commands.
//!
//! ```text
//! streamlens-admin migrate   apply the database migrations (POSTGRES_DSN / DATABASE_URL)
//! streamlens-admin topics    create the topics if missing and check co-partitioning
//! streamlens-admin keys create --tenant T [--name N]   a new API key for tenant T, shown once
//! streamlens-admin keys list [--tenant T]              keys without their secret part
//! streamlens-admin keys revoke ID                      refuse the key from now on
//! ```

use std::time::Duration;

use anyhow::{bail, Context};
use common::kafka::{KafkaSettings, Topics};
use common::settings::Env;

const USAGE: &str = "usage: streamlens-admin migrate | topics | keys create --tenant T [--name N] | keys list [--tenant T] | keys revoke ID";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init_cli();
    let command = std::env::args().nth(1).unwrap_or_default();
    let mut env = Env::process();
    match command.as_str() {
        "migrate" => {
            migrated(env).await?;
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
        "keys" => {
            let pool = migrated(env).await?;
            keys(&pool, &std::env::args().skip(2).collect::<Vec<_>>()).await?;
        }
        _ => bail!(USAGE),
    }
    Ok(())
}

/// The database, with every migration applied.
async fn migrated(mut env: Env) -> anyhow::Result<sqlx::PgPool> {
    let dsn = common::db::dsn_from_env(&mut env);
    env.finish()?;
    let pool = common::db::connect(&dsn, 1)
        .await
        .context("cannot connect to Postgres (POSTGRES_DSN / DATABASE_URL)")?;
    common::db::migrate(&pool)
        .await
        .context("migrations failed")?;
    Ok(pool)
}

/// The value after `--flag`, if given.
fn flag<'a>(args: &'a [String], name: &str) -> anyhow::Result<Option<&'a str>> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => match args.get(i + 1) {
            Some(v) if !v.starts_with("--") => Ok(Some(v)),
            _ => bail!("{name} needs a value\n{USAGE}"),
        },
    }
}

async fn keys(pool: &sqlx::PgPool, args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("create") => {
            let Some(tenant) = flag(args, "--tenant")?.filter(|t| !t.is_empty() && t.len() <= 255)
            else {
                bail!("keys create needs --tenant with 1 to 255 characters\n{USAGE}");
            };
            let name = flag(args, "--name")?.unwrap_or("");
            let (info, key) = common::keys::create(pool, tenant, name).await?;
            // The key itself goes to stdout alone, so scripts can capture it; it is never logged.
            eprintln!(
                "created key {} for tenant {:?}; it is shown once, store it now:",
                info.id, info.tenant_id
            );
            println!("{key}");
        }
        Some("list") => {
            let keys = common::keys::list(pool, flag(args, "--tenant")?).await?;
            println!(
                "{:>6}  {:<20}  {:<24}  {:<16}  {:<25}  revoked",
                "id", "tenant", "name", "prefix", "created"
            );
            for k in keys {
                println!(
                    "{:>6}  {:<20}  {:<24}  {:<16}  {:<25}  {}",
                    k.id,
                    k.tenant_id,
                    k.name,
                    k.prefix,
                    k.created_at.to_rfc3339(),
                    k.revoked_at
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        Some("revoke") => {
            let id: i64 = args
                .get(1)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("keys revoke needs a key id\n{USAGE}"))?;
            if common::keys::revoke(pool, id).await? {
                eprintln!("key {id} revoked; services refuse it within API_KEY_CACHE_SECS");
            } else {
                bail!("no live key with id {id}");
            }
        }
        _ => bail!(USAGE),
    }
    Ok(())
}
