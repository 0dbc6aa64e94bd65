//! Building and running the service.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::routes::{router, AppState};
use crate::settings::Settings;

/// A bound, connected, not yet serving query API.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: AppState,
    cors_origins: Vec<String>,
}

impl Application {
    /// Connects to Postgres, applies migrations and binds the port.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // Migrations on a connection of their own, without the queries' statement timeout.
        infra::db::connect_migrated(&settings.dsn, 1)
            .await?
            .close()
            .await;
        let pool = infra::db::connect_for_queries(
            &settings.dsn,
            settings.max_connections,
            settings.statement_timeout,
            "streamlens-metrics-api",
        )
        .await
        .context("cannot connect to Postgres (POSTGRES_DSN / DATABASE_URL)")?;
        let address = (settings.host, settings.port);
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {}:{}", address.0, address.1))?;
        let state = AppState {
            auth: settings.auth.build(&pool),
            pool,
            limits: settings.limits,
            metrics: Arc::new(Metrics::default()),
            request_timeout: settings.request_timeout,
            rollups: Default::default(),
            pricing: Arc::new(settings.pricing),
            webhook_allowed: Arc::new(settings.webhook_allowed),
        };
        Ok(Self {
            listener,
            state,
            cors_origins: settings.cors_origins,
        })
    }

    pub fn port(&self) -> u16 {
        infra::http::port(&self.listener)
    }

    /// Serves until `shutdown` resolves, then lets in-flight queries finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let router = router(self.state, &self.cors_origins);
        infra::http::serve("metrics API", self.listener, router, shutdown).await?;
        tracing::info!("metrics API stopped");
        Ok(())
    }
}
