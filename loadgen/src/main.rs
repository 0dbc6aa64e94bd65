//! Load generator and benchmark harness.
//!
//! `streamlens-loadgen --help` lists the modes, `streamlens-loadgen MODE --help` their flags.
//! `raw` is the yardstick: a plain librdkafka producer with the ingestion API's guarantees
//! (idempotent, `acks=all`, murmur2) writing the same request and response JSON to two
//! topics (`PREFIX.requests`, `PREFIX.responses`) straight to the broker.
//! Each mode prints one JSON line of figures, so scripts can compute ratios from one run.

// mimalloc: the batch path allocates per event from several threads, where glibc malloc
// spends much of its time on arena locks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod abuse;
mod check;
mod consume;
mod demo;
mod events;
mod faults;
mod harness;
mod http;
mod oracle;
mod otel;
mod otlp;
mod poison;
mod raw;

use clap::{Args as ClapArgs, Parser, Subcommand};

/// Load generator, fault-run oracle and benchmark harness for StreamLens. Each mode prints
/// one JSON line of figures.
#[derive(Debug, Parser)]
#[command(name = "streamlens-loadgen", version)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// A plain idempotent librdkafka producer writing request and response JSON straight to
    /// PREFIX.requests and PREFIX.responses: the yardstick for the ingestion API
    Raw(RawArgs),
    /// Batches of typed events posted to the ingestion API, several in flight
    Batch(BatchArgs),
    /// Single-event posts to the ingestion API, with latency percentiles
    Single(SingleArgs),
    /// OTLP protobuf exports of GenAI spans to the ingestion API's /v1/traces, several in
    /// flight
    Otlp(OtlpArgs),
    /// Reads PREFIX.requests and PREFIX.responses from the start to their end, doing nothing
    /// with the records: the yardstick for the processor
    Consume(TopicArgs),
    /// GETs one metrics API path many times; every answer must be 200
    Query(QueryArgs),
    /// Demo-shaped traffic (several tenants, models and routes, errors, timeouts, slow
    /// calls) until stopped, or for --duration-secs
    Demo(DemoArgs),
    /// A deterministic call stream for the fault runs, and the windows it must produce
    Oracle(OracleArgs),
    /// The last record of each window on a metrics topic (a JSON array)
    Latest(LatestArgs),
    /// What the processor stored and published, against the oracle's windows; exits 1 on
    /// any difference
    Check(check::CheckArgs),
    /// Every record of the topics, one JSON line each, for tracing a fault run's findings
    Dump(DumpArgs),
    /// Malformed records of every kind, with and without a key, on both input topics
    Poison(PoisonArgs),
    /// Hex of a stored latency histogram, for benchmark data
    Histogram(HistogramArgs),
    /// Fault runs: the oracle's stream through the real services on the local stack while
    /// processors, Postgres and the broker are killed, stopped and frozen, then the check;
    /// exits 1 unless every scenario is exact
    Chaos(faults::FaultArgs),
    /// The abuse run: both APIs fuzzed from their OpenAPI documents (schemathesis), malformed
    /// bodies, a slow client and poison records; exits 1 on any 5xx, unclear rejection,
    /// crash or stalled processor
    Abuse(abuse::AbuseArgs),
    /// The OpenTelemetry run: the OpenTelemetry Python SDK exports GenAI spans through
    /// /v1/traces; exits 1 unless every window the metrics API shows matches them
    Otel(otel::OtelArgs),
}

#[derive(Debug, ClapArgs)]
pub struct Brokers {
    /// Kafka bootstrap servers
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
}

#[derive(Debug, ClapArgs)]
pub struct Ingestion {
    /// The ingestion API's base URL
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
}

#[derive(Debug, ClapArgs)]
pub struct Tenants {
    /// Tenants and their API keys, as tenant=key pairs (acme=K1,globex=K2); without it,
    /// three tenants and no keys (AUTH_MODE=disabled)
    #[arg(long, default_value = "")]
    pub keys: String,
}

#[derive(Debug, ClapArgs)]
pub struct RawArgs {
    #[command(flatten)]
    pub brokers: Brokers,
    /// Topic prefix
    #[arg(long, default_value = "bench.raw")]
    pub topic: String,
    /// Events to write (half requests, half responses)
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Partitions of each topic, if it has to be created
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
}

#[derive(Debug, ClapArgs)]
pub struct BatchArgs {
    #[command(flatten)]
    pub ingestion: Ingestion,
    /// Events to post
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Events per batch
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// Batches in flight
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    pub concurrency: u64,
}

#[derive(Debug, ClapArgs)]
pub struct OtlpArgs {
    #[command(flatten)]
    pub ingestion: Ingestion,
    /// GenAI spans to export (rounded up to whole exports)
    #[arg(long, default_value_t = 100_000)]
    pub spans: usize,
    /// Spans per export (the OpenTelemetry SDKs' batch processors send up to 512)
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    pub spans_per_export: u64,
    /// Exports in flight
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    pub concurrency: u64,
}

#[derive(Debug, ClapArgs)]
pub struct SingleArgs {
    #[command(flatten)]
    pub ingestion: Ingestion,
    /// Posts to make
    #[arg(long, default_value_t = 10_000)]
    pub requests: usize,
    /// Posts in flight
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    pub concurrency: u64,
}

#[derive(Debug, ClapArgs)]
pub struct TopicArgs {
    #[command(flatten)]
    pub brokers: Brokers,
    /// Topic prefix
    #[arg(long, default_value = "bench.raw")]
    pub topic: String,
}

#[derive(Debug, ClapArgs)]
pub struct QueryArgs {
    /// The metrics API's base URL
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub url: String,
    /// Path and query string to GET
    #[arg(long, default_value = "/v1/metrics")]
    pub path: String,
    /// API key, sent as a bearer token
    #[arg(long, default_value = "")]
    pub key: String,
    /// GETs to make
    #[arg(long, default_value_t = 5_000)]
    pub requests: usize,
    /// Instead of a number of GETs: GETs until this many seconds have passed
    #[arg(long)]
    pub seconds: Option<f64>,
    /// GETs in flight
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub concurrency: u64,
}

#[derive(Debug, ClapArgs)]
pub struct DemoArgs {
    #[command(flatten)]
    pub ingestion: Ingestion,
    #[command(flatten)]
    pub tenants: Tenants,
    /// Events per second (two per call)
    #[arg(long, default_value_t = 20)]
    pub rate: u64,
    /// Minutes of history to post first, so charts have something to show
    #[arg(long, default_value_t = 0)]
    pub backfill_minutes: u64,
    /// Stop and report after this many seconds (0: run until stopped)
    #[arg(long, default_value_t = 0)]
    pub duration_secs: u64,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

#[derive(Debug, ClapArgs)]
pub struct OracleArgs {
    #[command(flatten)]
    pub ingestion: Ingestion,
    #[command(flatten)]
    pub tenants: Tenants,
    /// Where to write the windows the stream must produce
    #[arg(long, default_value = "oracle.json")]
    pub out: String,
    /// Calls per second
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// How long to post for
    #[arg(long, default_value_t = 120)]
    pub duration_secs: u64,
    /// Late calls are stamped this many seconds before they are posted, at least ...
    #[arg(long, default_value_t = 66)]
    pub late_from: i64,
    /// ... and at most
    #[arg(long, default_value_t = 80)]
    pub late_to: i64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Debug, ClapArgs)]
pub struct LatestArgs {
    #[command(flatten)]
    pub brokers: Brokers,
    /// The metrics topic
    #[arg(long, default_value = "llm.metrics")]
    pub topic: String,
}

#[derive(Debug, ClapArgs)]
pub struct DumpArgs {
    #[command(flatten)]
    pub brokers: Brokers,
    /// Topics to dump, comma-separated
    #[arg(
        long,
        default_value = "llm.requests,llm.responses",
        value_delimiter = ','
    )]
    pub topics: Vec<String>,
}

#[derive(Debug, ClapArgs)]
pub struct PoisonArgs {
    #[command(flatten)]
    pub brokers: Brokers,
    /// Topic prefix: PREFIX.requests and PREFIX.responses
    #[arg(long, default_value = "llm")]
    pub topic: String,
}

#[derive(Debug, ClapArgs)]
struct HistogramArgs {
    /// Values to record
    #[arg(long, default_value_t = 50)]
    values: u64,
    /// Each value divided by this: a fifth (5) for times to first token
    #[arg(long, default_value_t = 1)]
    divide: u64,
}

/// A latency histogram as the processor stores it, from `--values` spread like LLM latencies
/// (long right tail), hex-encoded for SQL's `decode(..., 'hex')`.
fn histogram(args: &HistogramArgs) -> serde_json::Value {
    let mut h = metrics_core::histogram::new();
    for i in 0..args.values {
        let latency = 200 + (i * i * 37) % 4000;
        metrics_core::histogram::record(&mut h, latency / args.divide.max(1));
    }
    let hex: String = metrics_core::histogram::encode(&h)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    serde_json::Value::String(hex)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mode = Cli::parse().mode;
    // The modes that give a verdict exit 1 when it is not "ok".
    let judged = matches!(
        mode,
        Mode::Check(_) | Mode::Chaos(_) | Mode::Abuse(_) | Mode::Otel(_)
    );
    let report = match mode {
        Mode::Raw(args) => raw::run(&args).await?,
        Mode::Batch(args) => http::batch(&args).await?,
        Mode::Single(args) => http::single(&args).await?,
        Mode::Otlp(args) => otlp::run(&args).await?,
        Mode::Consume(args) => consume::run(&args)?,
        Mode::Query(args) => http::query(&args).await?,
        Mode::Demo(args) => demo::run(&args).await?,
        Mode::Oracle(args) => oracle::run(&args).await?,
        Mode::Latest(args) => consume::latest(&args)?,
        Mode::Check(args) => check::run(&args).await?,
        Mode::Dump(args) => consume::dump(&args)?,
        Mode::Poison(args) => poison::run(&args).await?,
        Mode::Histogram(args) => histogram(&args),
        Mode::Chaos(args) => faults::run(&args).await?,
        Mode::Abuse(args) => abuse::run(&args).await?,
        Mode::Otel(args) => otel::run(&args).await?,
    };
    println!("{report}");
    if judged && report["ok"] != serde_json::Value::Bool(true) {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
