//! Building and running the processor.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_core::error::ErrorBody;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::producer::{DefaultProducerContext, ThreadedProducer};
use serde_json::json;
use tokio::net::TcpListener;

use crate::domain::engine::Engine;
use crate::pipeline::{self, Context, Shared, Timing};
use crate::settings::Settings;
use crate::store::Store;
use crate::watchdog::{self, WatchSettings};
use metrics_core::pricing::PricingTable;

pub struct Application {
    settings: Settings,
    shared: Arc<Shared>,
    /// The consumer's configuration: each (re)join of the group creates a consumer from it.
    config: ClientConfig,
    partitions: i32,
    listener: TcpListener,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("group", &self.settings.group)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Connects to Postgres (applying migrations), creates the topics if missing, and joins the
    /// consumer group. Fails with a clear error when a dependency is unusable.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = infra::db::connect_migrated(&settings.dsn, 4).await?;
        let topics = &settings.topics;
        let all = [
            topics.requests.as_str(),
            &topics.responses,
            &topics.metrics,
            &topics.dlq,
            &topics.alerts,
        ];
        let partitions = settings
            .kafka
            .ensure_topics(&all, &topics.inputs(), Duration::from_secs(10))
            .await
            .with_context(|| {
                format!(
                    "topic set-up on {} failed (KAFKA_BROKERS)",
                    settings.kafka.brokers
                )
            })?;
        let pricing = PricingTable::load(settings.pricing_file.as_deref().map(Path::new))
            .context("PRICING_FILE")?;
        let producer: ThreadedProducer<DefaultProducerContext> = settings
            .kafka
            .producer_config("streamlens-processor", Duration::from_secs(30))
            .create()
            .context("cannot create the Kafka producer")?;
        // Windows written before their roll-ups existed get them in the background; commits
        // keep them from now on, and queries read minute rows until then.
        tokio::spawn(build_rollups(pool.clone()));
        let pool_for_alerts = pool.clone();
        let store = Store::new(pool, &settings.group, &topics.requests, &topics.responses);
        let partitions = i32::try_from(partitions).context("partition count")?;
        if let Some(was) = store
            .check_layout(partitions)
            .await
            .context("cannot read the input layout from Postgres")?
        {
            anyhow::bail!(watchdog::layout_changed(&topics.requests, was, partitions));
        }
        let grace = settings.engine.grace;
        let shared = Arc::new(Shared::new(
            Engine::new(settings.engine, pricing),
            store,
            tokio::runtime::Handle::current(),
            producer,
            topics.clone(),
            settings.start_from,
            settings.retention,
        ));
        let (written, to_evaluate) = tokio::sync::mpsc::unbounded_channel();
        *pipeline::lock(&shared.alerts) = Some(written);
        let alerts = crate::alerts::Alerts {
            pool: pool_for_alerts,
            group: settings.group.clone(),
            grace,
            partitions,
            owned: {
                // Weak: the alert task must not keep the pipeline alive.
                let shared = Arc::downgrade(&shared);
                Box::new(move || {
                    shared
                        .upgrade()
                        .map(|s| s.ownership().owned)
                        .unwrap_or_default()
                })
            },
            producer: settings
                .kafka
                .producer_config("streamlens-processor-alerts", Duration::from_secs(30))
                .create()
                .context("cannot create the Kafka producer of alert events")?,
            topics: topics.clone(),
            allowed: settings.webhook_allowed.clone(),
            metrics: Arc::clone(&shared.metrics),
            rollups: infra::rollups::Readable::default(),
        };
        tokio::spawn(alerts.run(to_evaluate));
        let mut config = settings
            .kafka
            .client_config(&[("client.id", "streamlens-processor")]);
        if let Some(id) = &settings.instance_id {
            config.set("group.instance.id", id);
        }
        config
            .set("group.id", &settings.group)
            // Range keeps partition i of both topics on one instance; positions live in
            // Postgres, so nothing is committed to Kafka.
            .set("partition.assignment.strategy", "range")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // Statistics tell which input partitions are read to their end (see pipeline).
            .set("statistics.interval.ms", "1000")
            .set(
                "session.timeout.ms",
                settings.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (settings.session_timeout.as_millis() / 4)
                    .max(100)
                    .to_string(),
            )
            .set(
                "max.poll.interval.ms",
                settings.max_poll_interval.as_millis().to_string(),
            );
        let listener = TcpListener::bind((settings.host, settings.port))
            .await
            .with_context(|| format!("cannot listen on port {}", settings.port))?;
        Ok(Self {
            settings,
            shared,
            config,
            partitions,
            listener,
        })
    }

    pub fn port(&self) -> u16 {
        infra::http::port(&self.listener)
    }

    /// Processes until `shutdown` resolves, then writes a last flush and leaves the group.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::clone(&self.shared);
        let timing = Timing {
            commit_interval: self.settings.commit_interval,
            rejoin_after: self.settings.session_timeout + Duration::from_secs(3),
        };
        let (config, inputs) = (self.config, self.settings.topics.clone());
        let context = Arc::clone(&self.shared);
        let join = move || -> KafkaResult<BaseConsumer<Context>> {
            let consumer: BaseConsumer<Context> = config.create_with_context(Context {
                shared: Arc::clone(&context),
            })?;
            consumer.subscribe(&inputs.inputs())?;
            Ok(consumer)
        };
        let worker_stop = Arc::clone(&stop);
        let worker = std::thread::Builder::new()
            .name("pipeline".into())
            .spawn(move || pipeline::run(join, shared, timing, worker_stop))
            .context("cannot start the pipeline thread")?;
        let watch = WatchSettings {
            every: self.settings.watch_interval,
            unread_after: self.settings.unread_after,
            stall: self.settings.max_poll_interval,
        };
        let (watched, watch_stop) = (Arc::clone(&self.shared), Arc::clone(&stop));
        let partitions = self.partitions;
        let watcher = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watchdog::run(watched, watch, partitions, watch_stop))
            .context("cannot start the watchdog thread")?;
        let app = router(Arc::clone(&self.shared));
        tracing::info!(group = %self.settings.group, "metrics processor running");
        let serve_stop = Arc::clone(&stop);
        let failing = Arc::clone(&self.shared);
        let stopped = async move {
            tokio::select! {
                () = shutdown => {}
                () = failing.health.failed.notified() => {}
            }
            serve_stop.store(true, Ordering::Relaxed);
        };
        infra::http::serve("metrics processor", self.listener, app, stopped).await?;
        stop.store(true, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || (worker.join(), watcher.join()))
            .await
            .context("pipeline thread")
            .and_then(|(worker, watcher)| {
                worker.map_err(|_| anyhow::anyhow!("the pipeline thread panicked"))?;
                watcher.map_err(|_| anyhow::anyhow!("the watchdog thread panicked"))
            })?;
        if let Some(reason) = self.shared.health.failure() {
            anyhow::bail!(reason);
        }
        tracing::info!("metrics processor stopped");
        Ok(())
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn ready(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if let Err(e) = sqlx::query("SELECT 1").execute(shared.store.pool()).await {
        return unavailable(format!("database unreachable: {e}"));
    }
    match watchdog::readiness(&shared) {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))).into_response(),
        Err(reason) => unavailable(reason),
    }
}

fn unavailable(message: String) -> axum::response::Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(ErrorBody::new("not_ready", message)),
    )
        .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> axum::response::Response {
    infra::http::openmetrics(shared.metrics.registry())
}

/// Builds the roll-ups of the windows stored before they existed, once (any instance may; the
/// others find it done).
async fn build_rollups(pool: sqlx::PgPool) {
    let started = std::time::Instant::now();
    match infra::rollups::ensure_complete(&pool).await {
        Ok(None) => {}
        Ok(Some(built)) => tracing::info!(
            days = built.days,
            minute_rows = built.minute_rows,
            buckets = built.buckets,
            seconds = started.elapsed().as_secs_f64(),
            "built the roll-ups of the stored windows"
        ),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the roll-ups; range queries keep reading minute rows")
        }
    }
}
