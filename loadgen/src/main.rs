//! Load generator and benchmark harness.
//!
//! ```text
//! streamlens-loadgen raw    --brokers B --topic PREFIX --events N [--partitions P]
//! streamlens-loadgen batch  --url U --events N [--batch-size S] [--concurrency C]
//! streamlens-loadgen single --url U --requests N [--concurrency C]
//! streamlens-loadgen consume --brokers B --topic PREFIX
//! streamlens-loadgen oracle --url U --out FILE [--keys T=K,...] [--rate CALLS/S] [--duration-secs S]
//! streamlens-loadgen latest --brokers B --topic llm.metrics   last record of each window
//! streamlens-loadgen poison --brokers B --topic PREFIX       malformed records on both input topics
//! streamlens-loadgen demo   --url U [--keys T=K,...] [--rate EV/S] [--backfill-minutes M] [--duration-secs S]
//! streamlens-loadgen histogram [--values N]   hex of a stored latency histogram (bench data)
//! streamlens-loadgen query  --url U --path /v1/metrics?... [--key K] [--requests N] [--concurrency C]
//! ```
//! `raw` is the yardstick: a plain librdkafka producer with the ingestion API's guarantees
//! (idempotent, `acks=all`, murmur2) writing the same request and response JSON to two
//! topics (`PREFIX.requests`, `PREFIX.responses`) straight to the broker.
//! Each mode prints one JSON line of figures, so scripts can compute ratios from one run.

// mimalloc: the batch path allocates per event from several threads, where glibc malloc
// spends much of its time on arena locks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod consume;
mod demo;
mod events;
mod http;
mod oracle;
mod poison;
mod raw;

use std::collections::HashMap;

use anyhow::{bail, Context};

/// `--name value` pairs after the mode.
#[derive(Debug)]
pub struct Args(HashMap<String, String>);

impl Args {
    fn parse(rest: &[String]) -> anyhow::Result<Self> {
        let mut map = HashMap::new();
        let mut it = rest.iter();
        while let Some(flag) = it.next() {
            let Some(name) = flag.strip_prefix("--") else {
                bail!("expected --flag, got {flag}");
            };
            let value = it
                .next()
                .with_context(|| format!("--{name} needs a value"))?;
            map.insert(name.to_owned(), value.clone());
        }
        Ok(Self(map))
    }

    pub fn text(&self, name: &str, default: &str) -> String {
        self.0
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }

    pub fn number(&self, name: &str, default: usize) -> anyhow::Result<usize> {
        match self.0.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .with_context(|| format!("--{name} must be a number")),
        }
    }
}

/// A latency histogram as the processor stores it, from `--values` spread like LLM latencies
/// (long right tail), hex-encoded for SQL's `decode(..., 'hex')`.
fn histogram(args: &Args) -> anyhow::Result<serde_json::Value> {
    let n = args.number("values", 50)?;
    let mut h = common::histogram::new();
    for i in 0..n as u64 {
        common::histogram::record(&mut h, 200 + (i * i * 37) % 4000);
    }
    let hex: String = common::histogram::encode(&h)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(serde_json::Value::String(hex))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = argv.split_first() else {
        bail!("usage: streamlens-loadgen raw|batch|single|consume|query|demo|oracle|latest|dump|poison --flag value ...");
    };
    let args = Args::parse(rest)?;
    let report = match mode.as_str() {
        "raw" => raw::run(&args).await?,
        "batch" => http::batch(&args).await?,
        "single" => http::single(&args).await?,
        "consume" => consume::run(&args)?,
        "query" => http::query(&args).await?,
        "demo" => demo::run(&args).await?,
        "oracle" => oracle::run(&args).await?,
        "latest" => consume::latest(&args)?,
        "dump" => consume::dump(&args)?,
        "poison" => poison::run(&args).await?,
        "histogram" => histogram(&args)?,
        other => bail!(
            "unknown mode {other}: raw, batch, single, consume, query, demo, oracle, latest, dump or poison"
        ),
    };
    println!("{report}");
    Ok(())
}
