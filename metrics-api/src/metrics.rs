//! Every Prometheus metric the query API exports.

use infra::http::HttpMetrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
    /// Stored rows (minute windows and roll-ups) read to answer roll-ups and
    /// summaries.
    pub windows_read: Counter,
    pub database_errors: Counter,
}

/// 0.25 ms .. ~8 s
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("streamlens_query");
        let http = HttpMetrics::register(&mut registry, latency_histogram);
        let windows_read = Counter::default();
        let database_errors = Counter::default();
        registry.register(
            "windows_read",
            "Stored rows (minute windows and roll-ups) read for roll-ups and summaries",
            windows_read.clone(),
        );
        registry.register(
            "database_errors",
            "Queries the database failed",
            database_errors.clone(),
        );
        Self {
            registry,
            http,
            windows_read,
            database_errors,
        }
    }
}

impl Metrics {
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}
