//! Postgres: the pool every service uses and the migrations embedded at build time.

use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::settings::Env;

/// The migrations under `migrations/`, applied at start-up and by `streamlens-admin migrate`.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Where the database is. `POSTGRES_DSN` is the original name; `DATABASE_URL` is what sqlx
/// tooling expects; either works.
pub fn dsn_from_env(env: &mut Env) -> String {
    env.string(
        &["POSTGRES_DSN", "DATABASE_URL"],
        "postgres://streamlens:streamlens@127.0.0.1:5432/streamlens",
    )
}

pub async fn connect(dsn: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(dsn)
        .await
}

pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await
}
