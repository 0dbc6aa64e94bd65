//! Alert rules evaluated on the stream: after each commit, the rules of every tenant it wrote
//! windows for are evaluated over their windows ending at the newest one written (see
//! `infra::alerts`); transitions go to `llm.alerts` and to the rules' webhooks, signed, retried
//! with backoff and dead-lettered to `llm.dlq` after repeated failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use infra::alerts::{self, Delivery, Due};
use infra::kafka::Topics;
use metrics_core::tiles::Level;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::metrics::{Metrics, OutcomeLabels};

/// Webhook deliveries attempted between two evaluations.
const DELIVERIES_PER_ROUND: usize = 10;

/// Tenants written to by a commit, each with the end of its newest window written.
pub type Written = BTreeMap<Arc<str>, DateTime<Utc>>;

pub struct Alerts {
    pub pool: PgPool,
    pub producer: FutureProducer,
    pub topics: Topics,
    pub allowed: Vec<String>,
    pub metrics: Arc<Metrics>,
    /// Whether roll-ups may be read yet (asked of the database until they are complete).
    pub rollups: infra::rollups::Readable,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts")
            .field("topics", &self.topics)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl Alerts {
    /// Evaluates on every commit's tenants and delivers transitions, until `written` closes.
    pub async fn run(self, mut written: UnboundedReceiver<Written>) {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook client; alerts are off");
                return;
            }
        };
        // A crash between a commit and its evaluation: every rule is evaluated once at start,
        // at its tenant's newest window.
        match self.newest_windows().await {
            Ok(pending) => self.evaluate(pending).await,
            Err(e) => tracing::warn!(error = %e, "cannot read the tenants with alert rules"),
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                batch = written.recv() => {
                    let Some(mut pending) = batch else { return };
                    // Commits that came meanwhile: one evaluation per tenant, at its newest.
                    while let Ok(more) = written.try_recv() {
                        for (tenant, end) in more {
                            let newest = pending.entry(tenant).or_insert(end);
                            *newest = (*newest).max(end);
                        }
                    }
                    self.evaluate(pending).await;
                    self.deliver(&client).await;
                }
                _ = tick.tick() => self.deliver(&client).await,
            }
        }
    }

    async fn newest_windows(&self) -> Result<Written, sqlx::Error> {
        let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT m.tenant_id, max(m.window_end) FROM llm_metrics m
             WHERE m.tenant_id IN (SELECT tenant_id FROM alert_rules WHERE deleted_at IS NULL)
               AND m.window_start > now() - interval '1 day'
             GROUP BY m.tenant_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(t, end)| (t.into(), end)).collect())
    }

    async fn evaluate(&self, written: Written) {
        let coarsest = self
            .rollups
            .readable(&self.pool, Level::Day)
            .await
            .unwrap_or(Level::Minute);
        for (tenant, end) in written {
            match alerts::evaluate_tenant(&self.pool, &tenant, end, coarsest).await {
                Ok(outcome) => {
                    self.metrics.alert_evaluations.inc_by(outcome.rules as u64);
                    self.metrics
                        .alert_transitions
                        .inc_by(outcome.transitions as u64);
                }
                Err(e) => tracing::warn!(error = %e, %tenant, "alert rules not evaluated"),
            }
        }
    }

    /// Publishes new transitions to `llm.alerts`, then makes every webhook delivery that is due.
    async fn deliver(&self, client: &reqwest::Client) {
        let producer = &self.producer;
        let topic = &self.topics.alerts;
        let published = alerts::publish(&self.pool, 500, |events| async move {
            let sends = events.iter().map(|event| {
                let payload = serde_json::to_vec(event).unwrap_or_default();
                let key = event.key();
                async move {
                    producer
                        .send(
                            FutureRecord::to(topic).key(&key).payload(&payload),
                            Duration::from_secs(10),
                        )
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| e.to_string())
                }
            });
            futures::future::try_join_all(sends).await.map(|_| ())
        })
        .await;
        if let Err(e) = published {
            tracing::warn!(error = %e, "alert events not published");
        }
        // A few at a time, so that a slow receiver (5 s a try) does not hold evaluations back:
        // the rest wait for the next tick.
        for _ in 0..DELIVERIES_PER_ROUND {
            let next = alerts::deliver_next(&self.pool, |due| self.post(client, due)).await;
            match next {
                Ok(Some((due, true))) => self.count("delivered", &due),
                Ok(Some((due, false))) => {
                    self.count("dead", &due);
                    self.dead_letter(&due).await;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "alert webhooks not delivered");
                    break;
                }
            }
        }
    }

    /// One webhook attempt: the event as JSON, signed with the tenant's secret.
    async fn post(&self, client: &reqwest::Client, due: Due) -> (Due, Delivery) {
        if !metrics_core::alerts::webhook_allowed(&due.url, &self.allowed) {
            // Allowed when the rule was made, not any more: retrying will not change that.
            return (
                due,
                Delivery::Refused("not on ALERT_WEBHOOK_ALLOWED".into()),
            );
        }
        let body = serde_json::to_vec(&due.event).unwrap_or_default();
        let answer = client
            .post(&due.url)
            .header("Content-Type", "application/json")
            .header("X-StreamLens-Event-Id", due.event.id.to_string())
            .header(
                "X-StreamLens-Signature",
                alerts::signature(&due.secret, &body),
            )
            .body(body)
            .send()
            .await;
        let outcome = match answer {
            Ok(r) if r.status().is_success() => Delivery::Delivered,
            Ok(r) => Delivery::Failed(format!("answered {}", r.status())),
            Err(e) => Delivery::Failed(e.to_string()),
        };
        if let Delivery::Failed(why) = &outcome {
            self.metrics
                .alert_deliveries
                .get_or_create(&OutcomeLabels { outcome: "failed" })
                .inc();
            tracing::warn!(event = due.event.id, url = %due.url, %why, "alert webhook failed");
        }
        (due, outcome)
    }

    fn count(&self, outcome: &'static str, due: &Due) {
        self.metrics
            .alert_deliveries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        tracing::info!(event = due.event.id, rule = due.event.rule_id, state = %due.event.state, outcome, "alert webhook");
    }

    async fn dead_letter(&self, due: &Due) {
        let payload = serde_json::to_vec(&due.event).unwrap_or_default();
        let key = due.event.key();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "dlq.kind",
                value: Some("alert_webhook"),
            })
            .insert(Header {
                key: "dlq.reason",
                value: Some("the webhook failed every attempt"),
            });
        let record = FutureRecord::to(&self.topics.dlq)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        if let Err((e, _)) = self.producer.send(record, Duration::from_secs(10)).await {
            tracing::error!(error = %e, event = due.event.id, "cannot dead-letter an alert event");
        }
    }
}
