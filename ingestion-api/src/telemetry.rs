//! Every Prometheus metric the ingestion API exports, in one place.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<HttpLabels, Histogram>,
    pub events_accepted: Family<KindLabels, Counter>,
    pub events_rejected: Family<KindLabels, Counter>,
    pub produce_errors: Family<ReasonLabels, Counter>,
    pub produce_duration: Histogram,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("streamlens_ingestion");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let events_accepted = Family::<KindLabels, Counter>::default();
        let events_rejected = Family::<KindLabels, Counter>::default();
        let produce_errors = Family::<ReasonLabels, Counter>::default();
        let produce_duration = latency_histogram();
        registry.register(
            "http_requests",
            "HTTP requests answered",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            http_duration.clone(),
        );
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
        Self {
            registry,
            http_requests,
            http_duration,
            events_accepted,
            events_rejected,
            produce_errors,
            produce_duration,
        }
    }
}

impl Metrics {
    /// The text exposition format Prometheus scrapes.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
