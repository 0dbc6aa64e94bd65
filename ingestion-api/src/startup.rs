//! Building and running the service.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::limit::RateLimiter;
use crate::metrics::Metrics;
use crate::publisher::{KafkaPublisher, Publisher};
use crate::routes::{otlp_grpc, router, AppState, HttpConfig};
use crate::settings::Settings;
use futures::FutureExt;
use tonic::transport::server::TcpIncoming;

/// A bound, connected, not yet serving ingestion API.
pub struct Application {
    listener: TcpListener,
    /// OTLP/gRPC.
    grpc: TcpListener,
    state: AppState,
    shutdown_timeout: Duration,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("listener", &self.listener)
            .finish()
    }
}

impl Application {
    /// Makes sure the topics exist and are co-partitioned, connects the producer and binds the
    /// port. Fails with a clear error if the broker stays unreachable for `startup_timeout`.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        ensure_topics(&settings).await?;
        let publisher = KafkaPublisher::new(
            settings.kafka.clone(),
            settings.topics.clone(),
            settings.delivery_timeout,
        )
        .context("cannot create the Kafka producer")?;
        Self::with_publisher(settings, Arc::new(publisher)).await
    }

    /// Like [`Application::build`] with a publisher of the caller's choosing.
    pub async fn with_publisher(
        settings: Settings,
        publisher: Arc<dyn Publisher>,
    ) -> anyhow::Result<Self> {
        let address = (settings.host, settings.port);
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {}:{}", address.0, address.1))?;
        let grpc_address = (settings.host, settings.otlp_grpc_port);
        let grpc = TcpListener::bind(grpc_address).await.with_context(|| {
            format!(
                "cannot listen for OTLP/gRPC on {}:{} (OTLP_GRPC_PORT)",
                grpc_address.0, grpc_address.1
            )
        })?;
        let auth = if settings.auth.enabled {
            let pool = infra::db::connect_migrated(&settings.dsn, 4)
                .await
                .context("API keys are on (AUTH_MODE=keys) and live in Postgres")?;
            settings.auth.build(&pool)
        } else {
            settings.auth.build_disabled()
        };
        let limiter = (settings.auth.enabled && settings.rate_per_sec > 0)
            .then(|| Arc::new(RateLimiter::new(settings.rate_per_sec, settings.rate_burst)));
        let state = AppState {
            auth,
            limiter,
            publisher,
            metrics: Arc::new(Metrics::default()),
            config: Arc::new(HttpConfig {
                topics: settings.topics.clone(),
                limits: settings.limits,
                max_body_bytes: settings.max_body_bytes,
                max_batch_bytes: settings.max_batch_bytes,
                max_batch_items: settings.max_batch_items,
                request_timeout: settings.request_timeout,
            }),
        };
        Ok(Self {
            listener,
            grpc,
            state,
            shutdown_timeout: settings.shutdown_timeout,
        })
    }

    pub fn port(&self) -> u16 {
        infra::http::port(&self.listener)
    }

    pub fn otlp_grpc_port(&self) -> u16 {
        infra::http::port(&self.grpc)
    }

    /// Serves HTTP and OTLP/gRPC until `shutdown` resolves, then stops accepting, lets
    /// in-flight requests finish their produces, and flushes the producer.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let publisher = Arc::clone(&self.state.publisher);
        let shutdown = shutdown.shared();
        tracing::info!(address = %self.grpc.local_addr()?, "OTLP/gRPC listening");
        let grpc = tonic::transport::Server::builder()
            .add_service(otlp_grpc(self.state.clone()))
            .serve_with_incoming_shutdown(TcpIncoming::from(self.grpc), shutdown.clone());
        let http = infra::http::serve("ingestion API", self.listener, router(self.state), shutdown);
        let (http, grpc) = tokio::join!(http, grpc);
        http?;
        grpc.context("OTLP/gRPC server failed")?;
        publisher.flush(self.shutdown_timeout).await;
        tracing::info!("ingestion API stopped");
        Ok(())
    }
}

/// Creates the topics if missing, retrying while the broker comes up.
async fn ensure_topics(settings: &Settings) -> anyhow::Result<()> {
    let topics = &settings.topics;
    let all = [
        topics.requests.as_str(),
        &topics.responses,
        &topics.metrics,
        &topics.dlq,
    ];
    let deadline = Instant::now() + settings.startup_timeout;
    let mut delay = Duration::from_millis(200);
    loop {
        match settings
            .kafka
            .ensure_topics(&all, &topics.inputs(), Duration::from_secs(5))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e @ infra::kafka::TopicError::NotCoPartitioned(_)) => return Err(e.into()),
            Err(e) if Instant::now() >= deadline => {
                return Err(anyhow::Error::new(e).context(format!(
                    "the Kafka broker at {} was not usable within {:?} (KAFKA_BROKERS, KAFKA_STARTUP_TIMEOUT_SECS)",
                    settings.kafka.brokers, settings.startup_timeout
                )))
            }
            Err(e) => {
                tracing::warn!(error = %e, "waiting for the Kafka broker");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}
