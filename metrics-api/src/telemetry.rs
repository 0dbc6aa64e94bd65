//! Every Prometheus metric the query API exports.

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

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<HttpLabels, Histogram>,
    /// Stored windows read to answer roll-ups and summaries.
    pub windows_read: Counter,
    pub database_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("streamlens_query");
        // 0.25 ms .. ~8 s
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.00025, 2.0, 16))) as fn() -> Histogram,
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        let windows_read = Counter::default();
        let database_errors = Counter::default();
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
            "windows_read",
            "Stored windows read for roll-ups and summaries",
            windows_read.clone(),
        );
        registry.register(
            "database_errors",
            "Queries the database failed",
            database_errors.clone(),
        );
        Self {
            registry,
            http_requests,
            http_duration,
            windows_read,
            database_errors,
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
