//! Operator commands: migrations, topics, API keys. `streamlens-admin --help` lists them,
//! `streamlens-admin COMMAND --help` their arguments.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use infra::kafka::{KafkaSettings, Topics};
use metrics_core::ids::TenantId;
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
    }
    Ok(())
}

/// The database, with every migration applied.
async fn migrated(mut env: Env) -> anyhow::Result<sqlx::PgPool> {
    let dsn = infra::db::dsn_from_env(&mut env);
    env.finish()?;
    let pool = infra::db::connect(&dsn, 1)
        .await
        .context("cannot connect to Postgres (POSTGRES_DSN / DATABASE_URL)")?;
    infra::db::migrate(&pool)
        .await
        .context("migrations failed")?;
    Ok(pool)
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
}
