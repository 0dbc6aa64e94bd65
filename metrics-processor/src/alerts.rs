//! Alert rules evaluated on the stream: each rule over its window ending at the newest minute
//! closed on every input partition of the group (`infra::alerts::closed_until`), so a rule
//! never judges a minute one partition has written and another not yet. When that minute
//! advances, the rules of every tenant whose home partition (the tenant's name through the
//! record partitioner) this instance owns are evaluated, a silent tenant's `requests <` rule
//! included: instances share the tenants as they share the partitions. After a commit that
//! wrote windows of a tenant, that tenant's rules are evaluated again at the same minute, by
//! whichever instance wrote them (a late call may have corrected a minute they watch). An
//! instance's first evaluation covers every tenant, so a crash between a commit and its
//! evaluation loses nothing. Transitions go to `llm.alerts` and to the rules'
//! webhooks, signed, retried with backoff and dead-lettered to `llm.dlq` after repeated
//! failure.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
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

/// The tenants a commit wrote windows for.
pub type Written = BTreeSet<Arc<str>>;

/// The partition whose owner sweeps a tenant's rules each minute.
pub fn home_partition(tenant: &str, partitions: i32) -> i32 {
    infra::kafka::partition_for(tenant.as_bytes(), partitions)
}

pub struct Alerts {
    pub pool: PgPool,
    /// The consumer group whose watermarks say which minutes are closed.
    pub group: String,
    /// The window grace: a minute is closed once the watermark is this far past its end.
    pub grace: TimeDelta,
    /// The input partitions (a tenant's home partition is one of them).
    pub partitions: i32,
    /// The input partitions this instance owns now.
    pub owned: Box<dyn Fn() -> Vec<i32> + Send + Sync>,
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
    /// Evaluates after every commit and delivers transitions, until `written` closes.
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
        // The newest closed minute every rule was evaluated at; none yet, so the first commit
        // evaluates every rule (a crash between a commit and its evaluation loses nothing).
        let mut evaluated: Option<DateTime<Utc>> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                batch = written.recv() => {
                    let Some(mut tenants) = batch else { return };
                    // Commits that came meanwhile: one evaluation for them all.
                    while let Ok(more) = written.try_recv() {
                        tenants.extend(more);
                    }
                    self.evaluate(&mut evaluated, tenants).await;
                    self.deliver(&client).await;
                }
                _ = tick.tick() => self.deliver(&client).await,
            }
        }
    }

    /// Evaluates at the newest minute closed on every partition: when that minute is new, the
    /// rules of the tenants this instance owns (at its first evaluation, every tenant's); and
    /// always those of the tenants just written.
    async fn evaluate(&self, evaluated: &mut Option<DateTime<Utc>>, written: Written) {
        let closed = match alerts::closed_until(&self.pool, &self.group, self.grace).await {
            Ok(Some(closed)) => closed,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the group's watermarks; alert rules wait");
                return;
            }
        };
        let every = evaluated.is_none_or(|done| closed > done);
        let tenants: Vec<String> = if every {
            let all = match alerts::tenants_with_rules(&self.pool).await {
                Ok(tenants) => tenants,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the tenants with alert rules");
                    return;
                }
            };
            if evaluated.is_none() {
                all
            } else {
                // The tenants it owns, and those it just wrote (their owner may have swept
                // this minute before these windows landed).
                let owned = (self.owned)();
                all.into_iter()
                    .filter(|t| {
                        owned.contains(&home_partition(t, self.partitions))
                            || written.contains(t.as_str())
                    })
                    .collect()
            }
        } else {
            written.iter().map(|t| t.to_string()).collect()
        };
        let coarsest = self
            .rollups
            .readable(&self.pool, Level::Day)
            .await
            .unwrap_or(Level::Minute);
        let mut complete = true;
        for tenant in tenants {
            match alerts::evaluate_tenant(&self.pool, &tenant, closed, coarsest).await {
                Ok(outcome) => {
                    self.metrics.alert_evaluations.inc_by(outcome.rules as u64);
                    self.metrics
                        .alert_transitions
                        .inc_by(outcome.transitions as u64);
                }
                Err(e) => {
                    complete = false;
                    tracing::warn!(error = %e, %tenant, "alert rules not evaluated");
                }
            }
        }
        // A failure: every rule again at the next commit.
        if every && complete {
            *evaluated = Some(closed);
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
