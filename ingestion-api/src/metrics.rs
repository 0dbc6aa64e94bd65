//! Every Prometheus metric the ingestion API exports, in one place.

use infra::http::HttpMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// What became of an OpenTelemetry span: `accepted` (a call, written), `skipped` (no model
/// call), `rejected` (a model call that could not be taken).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
    /// `events_accepted` of each kind, made once: every request adds to them.
    pub accepted_requests: Counter,
    pub accepted_responses: Counter,
    pub events_rejected: Family<KindLabels, Counter>,
    pub produce_errors: Family<ReasonLabels, Counter>,
    pub produce_duration: Histogram,
    pub spans: Family<OutcomeLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("streamlens_ingestion");
        let http = HttpMetrics::register(&mut registry, latency_histogram);
        let events_accepted = Family::<KindLabels, Counter>::default();
        let events_rejected = Family::<KindLabels, Counter>::default();
        let produce_errors = Family::<ReasonLabels, Counter>::default();
        let produce_duration = latency_histogram();
        let spans = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "events_accepted",
            "Events acknowledged by the broker",
            events_accepted.clone(),
        );
        registry.register(
            "events_rejected",
            "Events refused by validation",
            events_rejected.clone(),
        );
        registry.register(
            "produce_errors",
            "Events the broker did not acknowledge, by reason",
            produce_errors.clone(),
        );
        registry.register(
            "produce_duration_seconds",
            "Time from handing a batch of records to the producer until every acknowledgement",
            produce_duration.clone(),
        );
        registry.register(
            "otlp_spans",
            "OpenTelemetry spans received, by outcome",
            spans.clone(),
        );
        let accepted = |kind| events_accepted.get_or_create(&KindLabels { kind }).clone();
        Self {
            registry,
            http,
            accepted_requests: accepted("request"),
            accepted_responses: accepted("response"),
            events_rejected,
            produce_errors,
            produce_duration,
            spans,
        }
    }
}

impl Metrics {
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}
