//! Every Prometheus metric the processor exports, in one place.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: i32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub records: Family<TopicLabels, Counter>,
    pub dead_letters: Family<ReasonLabels, Counter>,
    pub orphans: Counter,
    pub late_events: Counter,
    pub duplicates: Counter,
    pub pending_halves: Gauge,
    pub open_windows: Gauge,
    pub windows_written: Counter,
    pub commit_duration: Histogram,
    pub commit_failures: Counter,
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    pub published: Counter,
    pub unread_partitions: Family<PartitionLabels, Gauge>,
    pub rejoins: Counter,
    pub refetches: Counter,
    pub alert_evaluations: Counter,
    pub alert_transitions: Counter,
    pub alert_deliveries: Family<OutcomeLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("streamlens_processor");
        let m = Self {
            records: Family::default(),
            dead_letters: Family::default(),
            orphans: Counter::default(),
            late_events: Counter::default(),
            duplicates: Counter::default(),
            pending_halves: Gauge::default(),
            open_windows: Gauge::default(),
            windows_written: Counter::default(),
            commit_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            commit_failures: Counter::default(),
            consumer_lag: Family::default(),
            published: Counter::default(),
            unread_partitions: Family::default(),
            rejoins: Counter::default(),
            refetches: Counter::default(),
            alert_evaluations: Counter::default(),
            alert_transitions: Counter::default(),
            alert_deliveries: Family::default(),
            registry: Registry::default(),
        };
        registry.register("records", "Input records consumed", m.records.clone());
        registry.register(
            "dead_letters",
            "Records sent to the dead-letter topic, by reason",
            m.dead_letters.clone(),
        );
        registry.register(
            "orphans",
            "Responses whose request never came",
            m.orphans.clone(),
        );
        registry.register(
            "late_events",
            "Pairs or timeouts added to an already written window",
            m.late_events.clone(),
        );
        registry.register(
            "duplicates",
            "Second deliveries of a half, counted nowhere",
            m.duplicates.clone(),
        );
        registry.register(
            "join_pending_halves",
            "Requests and responses waiting for their partner",
            m.pending_halves.clone(),
        );
        registry.register(
            "open_windows",
            "Windows not yet written",
            m.open_windows.clone(),
        );
        registry.register(
            "windows_written",
            "Window partials merged into Postgres",
            m.windows_written.clone(),
        );
        registry.register(
            "flush_duration_seconds",
            "Time to write one flush (windows, decisions, positions) in one transaction",
            m.commit_duration.clone(),
        );
        registry.register(
            "commit_failures",
            "Flushes Postgres did not accept (retried)",
            m.commit_failures.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records between the consumer's position and the partition end",
            m.consumer_lag.clone(),
        );
        registry.register(
            "metrics_published",
            "Window rows produced to llm.metrics",
            m.published.clone(),
        );
        registry.register(
            "unread_partitions",
            "1 while an input partition has records waiting and a stored position that stands \
             still: no instance of the group reads it",
            m.unread_partitions.clone(),
        );
        registry.register(
            "group_rejoins",
            "Times this instance left and rejoined the group because partitions were unread",
            m.rejoins.clone(),
        );
        registry.register(
            "input_refetches",
            "Times a fetch began past the offset asked for (the broker skipped records) and the \
             input partition was read again from further back",
            m.refetches.clone(),
        );
        registry.register(
            "alert_evaluations",
            "Alert rules evaluated on written windows",
            m.alert_evaluations.clone(),
        );
        registry.register(
            "alert_transitions",
            "Alert rules that went from ok to firing or back",
            m.alert_transitions.clone(),
        );
        registry.register(
            "alert_deliveries",
            "Alert webhook attempts by outcome: delivered, failed (tried again later), dead (given up and dead-lettered)",
            m.alert_deliveries.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}
