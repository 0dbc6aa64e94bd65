//! Operator commands: migrations, topics, API keys, prices. `streamlens-admin --help` lists them,
//! `streamlens-admin COMMAND --help` their arguments.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use infra::kafka::{KafkaSettings, Topics};
use metrics_core::ids::TenantId;
use metrics_core::pricing::PricingTable;
use metrics_core::settings::Env;

/// Operator commands for StreamLens. The database comes from POSTGRES_DSN (or DATABASE_URL),
/// the broker and topics from the services' own variables (KAFKA_BROKERS, TOPIC_*).
#[derive(Debug, Parser)]
#[command(name = "streamlens-admin", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the database migrations
    Migrate,
    /// Create the topics if missing and check that the input topics are co-partitioned
    Topics,
    /// API keys
    #[command(subcommand)]
    Keys(Keys),
    /// Model prices
    #[command(subcommand)]
    Prices(Prices),
    /// Hourly and daily roll-ups
    #[command(subcommand)]
    Rollups(Rollups),
}

#[derive(Debug, Subcommand)]
enum Rollups {
    /// Recompute the roll-ups of the UTC days overlapping [from, to) from the minute windows
    /// (without a range: build them for every stored window if they are not complete yet, as
    /// the processor does at start-up). Running processors wait for each day's transaction.
    Rebuild {
        /// Start of the range, RFC 3339
        #[arg(long, requires = "to")]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// End of the range (exclusive), RFC 3339
        #[arg(long, requires = "from")]
        to: Option<chrono::DateTime<chrono::Utc>>,
    },
}

#[derive(Debug, Subcommand)]
enum Prices {
    /// Check a pricing file, and list the models of the stored windows it leaves without a
    /// price (their calls are counted as unpriced); exits 1 when there is any
    Check {
        /// The pricing file, as the processor reads it; without one, the built-in prices
        #[arg(long, env = "PRICING_FILE")]
        file: Option<PathBuf>,
        /// How many days of windows to look at
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Cost the stored windows starting in [from, to) anew from their token sums, at the
    /// prices of the table in force at each window's start; roll-ups follow, and the
    /// processors publish the changed windows to llm.metrics. Update the processors'
    /// PRICING_FILE first, or windows still arriving are costed at the old prices.
    Reprice {
        /// Start of the range, RFC 3339
        #[arg(long)]
        from: chrono::DateTime<chrono::Utc>,
        /// End of the range (exclusive), RFC 3339
        #[arg(long)]
        to: chrono::DateTime<chrono::Utc>,
        /// Only this tenant's windows (default: every tenant's)
        #[arg(long)]
        tenant: Option<TenantId>,
        /// The pricing file, as the processor reads it; without one, the built-in prices
        #[arg(long, env = "PRICING_FILE")]
        file: Option<PathBuf>,
        /// Who runs it, for the audit row (default: $USER)
        #[arg(long, env = "USER", default_value = "unknown")]
        by: String,
    },
    /// The audit rows of the latest re-pricings, newest first
    History {
        /// How many
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

#[derive(Debug, Subcommand)]
enum Keys {
    /// A new API key for a tenant, printed once on stdout
    Create {
        /// The tenant the key acts for: 1 to 255 characters, no '|' or control characters
        #[arg(long)]
        tenant: TenantId,
        /// A label for the key
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Keys without their secret part
    List {
        /// Only this tenant's keys
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Refuse a key from now on
    Revoke {
        /// The key's id, as `keys list` shows it
        id: i64,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    infra::logging::init_cli();
    let mut env = Env::process();
    match cli.command {
        Command::Migrate => {
            migrated(env).await?;
            tracing::info!("migrations applied");
        }
        Command::Topics => {
            let kafka = KafkaSettings::from_env(&mut env);
            let topics = Topics::from_env(&mut env);
            env.finish()?;
            let all = [
                topics.requests.as_str(),
                &topics.responses,
                &topics.metrics,
                &topics.dlq,
                &topics.alerts,
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
        Command::Keys(command) => {
            let pool = migrated(env).await?;
            keys(&pool, command).await?;
        }
        Command::Rollups(Rollups::Rebuild { from, to }) => {
            let pool = migrated(env).await?;
            let started = std::time::Instant::now();
            let built = match (from, to) {
                (Some(from), Some(to)) => {
                    let mut conn = pool.acquire().await?;
                    Some(infra::rollups::rebuild(&mut conn, from, to).await?)
                }
                _ => infra::rollups::ensure_complete(&pool).await?,
            };
            match built {
                Some(b) => eprintln!(
                    "rebuilt {} days: {} minute windows into {} roll-up rows in {:.1} s",
                    b.days,
                    b.minute_rows,
                    b.buckets,
                    started.elapsed().as_secs_f64()
                ),
                None => eprintln!("the roll-ups are complete already"),
            }
        }
        Command::Prices(Prices::Check { file, days }) => {
            let table = PricingTable::load(file.as_deref())?;
            let pool = migrated(env).await?;
            let seen = seen_models(&pool, &table, days).await?;
            let missing = seen.iter().filter(|m| m.priced_as.is_none()).count();
            println!(
                "{:<40}  {:>12}  {:<25}  priced as",
                "model", "requests", "last seen"
            );
            for m in &seen {
                println!(
                    "{:<40}  {:>12}  {:<25}  {}",
                    m.model,
                    m.requests,
                    m.last_seen.to_rfc3339(),
                    m.priced_as
                        .as_deref()
                        .unwrap_or("NO PRICE: counted as unpriced")
                );
            }
            let source = file.map_or("the built-in prices".into(), |f| f.display().to_string());
            if missing > 0 {
                bail!(
                    "{missing} of {} models seen in the last {days} days have no price in {source}",
                    seen.len()
                );
            }
            eprintln!("{source}: valid; every one of the {} models seen in the last {days} days has a price", seen.len());
        }
        Command::Prices(Prices::Reprice {
            from,
            to,
            tenant,
            file,
            by,
        }) => {
            if from >= to {
                bail!("--from must be before --to");
            }
            let table = PricingTable::load(file.as_deref())?;
            let pool = migrated(env).await?;
            let started = std::time::Instant::now();
            let r = infra::reprice::reprice(
                &pool,
                &table,
                tenant.as_ref().map(|t| t.as_str()),
                from,
                to,
                &by,
            )
            .await?;
            let usd = |nanos: i64| nanos as f64 / 1e9;
            eprintln!(
                "re-priced {} windows over {} days in {:.1} s ({} changed; audit row {}, price table {}): cost {:.6} -> {:.6} USD, unpriced calls {} -> {}",
                r.windows,
                r.days,
                started.elapsed().as_secs_f64(),
                r.changed,
                r.id,
                infra::reprice::table_version(&table),
                usd(r.old_cost_nanos),
                usd(r.new_cost_nanos),
                r.old_unpriced,
                r.new_unpriced,
            );
        }
        Command::Prices(Prices::History { limit }) => {
            let pool = migrated(env).await?;
            println!(
                "{:>5}  {:<12}  {:<16}  {:<12}  {:<20}  {:<20}  {:<20}  {:>9}  {:>14}  {:>14}  {:>9}",
                "id", "by", "price table", "tenant", "from", "to", "finished", "changed",
                "old USD", "new USD", "unpriced"
            );
            for r in infra::reprice::history(&pool, limit).await? {
                use sqlx::Row;
                let time = |c: &str| -> anyhow::Result<String> {
                    Ok(r.try_get::<Option<chrono::DateTime<chrono::Utc>>, _>(c)?
                        .map_or("-".into(), |t| t.format("%Y-%m-%dT%H:%MZ").to_string()))
                };
                let usd =
                    |c: &str| -> anyhow::Result<f64> { Ok(r.try_get::<i64, _>(c)? as f64 / 1e9) };
                println!(
                    "{:>5}  {:<12}  {:<16}  {:<12}  {:<20}  {:<20}  {:<20}  {:>9}  {:>14.6}  {:>14.6}  {:>4} -> {}",
                    r.try_get::<i64, _>("id")?,
                    r.try_get::<String, _>("actor")?,
                    r.try_get::<String, _>("table_version")?,
                    r.try_get::<Option<String>, _>("tenant_id")?.unwrap_or_else(|| "(all)".into()),
                    time("range_from")?,
                    time("range_to")?,
                    time("finished_at")?,
                    r.try_get::<i64, _>("changed")?,
                    usd("old_cost_nanos")?,
                    usd("new_cost_nanos")?,
                    r.try_get::<i64, _>("old_unpriced")?,
                    r.try_get::<i64, _>("new_unpriced")?,
                );
            }
        }
    }
    Ok(())
}

/// A model of the stored windows and what prices it.
#[derive(Debug)]
struct Seen {
    model: String,
    requests: i64,
    last_seen: chrono::DateTime<chrono::Utc>,
    /// The price table's entry for it, at its last window; `None`: no price then.
    priced_as: Option<String>,
}

/// Every model with windows in the last `days` days, each with the entry that prices it at
/// its last window.
async fn seen_models(
    pool: &sqlx::PgPool,
    table: &PricingTable,
    days: u32,
) -> anyhow::Result<Vec<Seen>> {
    let rows: Vec<(String, i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT model, sum(requests)::BIGINT, max(window_start) FROM llm_metrics
         WHERE window_start >= now() - make_interval(days => $1)
         GROUP BY model ORDER BY model",
    )
    .bind(i32::try_from(days).unwrap_or(i32::MAX))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(model, requests, last_seen)| {
            let priced_as = table
                .price(&model, last_seen)
                .and(table.priced_as(&model))
                .map(|entry| match table.provider(entry) {
                    Some(provider) => format!("{entry} ({provider})"),
                    None => entry.to_owned(),
                });
            Seen {
                model,
                requests,
                last_seen,
                priced_as,
            }
        })
        .collect())
}

/// The database, with every migration applied.
async fn migrated(mut env: Env) -> anyhow::Result<sqlx::PgPool> {
    let dsn = infra::db::dsn_from_env(&mut env);
    env.finish()?;
    infra::db::connect_migrated(&dsn, 1).await
}

async fn keys(pool: &sqlx::PgPool, command: Keys) -> anyhow::Result<()> {
    match command {
        Keys::Create { tenant, name } => {
            let (info, key) = infra::keys::create(pool, &tenant, &name).await?;
            // The key itself goes to stdout alone, so scripts can capture it; it is never logged.
            eprintln!(
                "created key {} for tenant {:?}; it is shown once, store it now:",
                info.id, info.tenant_id
            );
            println!("{key}");
        }
        Keys::List { tenant } => {
            let keys = infra::keys::list(pool, tenant.as_deref()).await?;
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
        Keys::Revoke { id } => {
            if infra::keys::revoke(pool, id).await? {
                eprintln!("key {id} revoked; services refuse it within API_KEY_CACHE_SECS");
            } else {
                bail!("no live key with id {id}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_key_needs_a_valid_tenant_id() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["streamlens-admin"], args].concat());
        assert!(parse(&["keys", "create"]).is_err());
        assert!(parse(&["keys", "create", "--tenant", ""]).is_err());
        assert!(parse(&["keys", "create", "--tenant", &"t".repeat(256)]).is_err());
        assert!(parse(&["keys", "create", "--tenant", "a|b"]).is_err());
        assert!(matches!(
            parse(&["keys", "create", "--tenant", "acme"]).unwrap().command,
            Command::Keys(Keys::Create { tenant, name }) if tenant == "acme" && name.is_empty()
        ));
        assert!(parse(&["keys", "revoke", "x"]).is_err());
    }

    /// Against the real database: a model of the stored windows without a price is named, a
    /// dated snapshot of a priced family is not, and a model whose price starts after its
    /// windows counts as without one.
    #[tokio::test]
    async fn prices_check_names_the_seen_models_without_a_price() {
        let pool = infra::db::connect(&test_support::database_url(), 1)
            .await
            .expect("Postgres answers");
        infra::db::migrate(&pool).await.expect("migrations apply");
        let tenant = test_support::unique("prices-");
        let unknown = test_support::unique("in-house-");
        let later = test_support::unique("priced-later-");
        for model in ["gpt-4o-2024-08-06", unknown.as_str(), later.as_str()] {
            sqlx::query(
                "INSERT INTO llm_metrics (tenant_id, route, model, window_start, window_end, requests)
                 VALUES ($1, '/r', $2, date_trunc('minute', now()) - interval '1 hour',
                         date_trunc('minute', now()) - interval '59 minutes', 3)",
            )
            .bind(&tenant)
            .bind(model)
            .execute(&pool)
            .await
            .expect("a window");
        }
        let json = format!(
            r#"{{"models": {{"{later}": [{{"valid_from": "2999-01-01T00:00:00Z", "input": 1, "output": 1}}]}}}}"#
        );
        let table = PricingTable::with_file(&json).unwrap();
        let seen = seen_models(&pool, &table, 1).await.unwrap();
        let find = |m: &str| seen.iter().find(|s| s.model == m).expect(m);
        assert_eq!(
            find("gpt-4o-2024-08-06").priced_as.as_deref(),
            Some("gpt-4o (openai)")
        );
        assert_eq!(find(&unknown).priced_as, None);
        assert_eq!(find(&later).priced_as, None);
        assert!(find(&unknown).requests >= 3);
    }
}
