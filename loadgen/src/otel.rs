//! The OpenTelemetry run: the stock OpenTelemetry Python SDK with its OTLP/HTTP exporter, and
//! again with its OTLP/gRPC exporter, each given nothing but the endpoint and the key, export
//! GenAI spans built to known totals (and a parent span per call that is no model call)
//! through the ingestion API into the processor. Every window the metrics API then shows must
//! equal what the spans make, and nothing else may appear.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use crate::harness::{free_port, say, Run, Service, Services, Stack};

#[derive(Debug, Args)]
pub struct OtelArgs {
    /// Model calls (GenAI spans) to export, over each protocol
    #[arg(long, env = "OTEL_CALLS", default_value_t = 600)]
    pub calls: u64,
    /// A Python with opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http
    /// (scripts/otel.sh installs them into a venv of its own)
    #[arg(long, env = "OTEL_PYTHON", default_value = "python3")]
    pub python: PathBuf,
    /// The exporting script
    #[arg(long, default_value = "scripts/otel_export.py")]
    pub script: PathBuf,
    /// Where logs and the report go
    #[arg(long, default_value = "target/otel")]
    pub out: PathBuf,
    #[command(flatten)]
    pub stack: Stack,
}

pub async fn run(args: &OtelArgs) -> anyhow::Result<Value> {
    let stack = &args.stack;
    let mut run = Run::new("otel", "otel", &stack.bin()?, &args.out, &stack.dsn).await?;
    let tag = format!("otel-{}", chrono::Utc::now().timestamp());
    for (variable, value) in [
        ("RATE_LIMIT_EVENTS_PER_SEC", "0"),
        ("COMMIT_INTERVAL_MS", "200"),
        ("PARTITION_IDLE_SECS", "1"),
        ("WINDOW_GRACE_SECS", "1"),
        // The second exporter's calls are as old as the first's, so the two halves of each
        // must still meet after the first export moved reading on by minutes.
        ("JOIN_TTL_SECS", "600"),
    ] {
        run.set(variable, value);
    }
    let grpc_port = free_port();
    run.set("OTLP_GRPC_PORT", grpc_port.to_string());
    run.own_topics(&stack.brokers, &tag, 3).await?;
    let Services {
        key,
        ingestion,
        processor: _processor,
        query,
    } = run.all_services("otel").await?;

    let mut expected = serde_json::Map::new();
    for (protocol, endpoint) in [
        ("http", ingestion.url("/v1/traces")),
        ("grpc", format!("http://127.0.0.1:{grpc_port}")),
    ] {
        say(
            "otel",
            &format!(
                "the OpenTelemetry Python SDK exports {} GenAI spans over OTLP/{protocol}",
                args.calls
            ),
        );
        let output = tokio::process::Command::new(&args.python)
            .arg(&args.script)
            .args([protocol, &endpoint, &key, &args.calls.to_string()])
            .output()
            .await
            .map_err(|e| anyhow::anyhow!("running {}: {e}", args.python.display()))?;
        std::fs::write(run.file(&format!("export-{protocol}.log")), &output.stderr)?;
        anyhow::ensure!(
            output.status.success(),
            "the exporting script failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let sent: Value = serde_json::from_slice(&output.stdout)?;
        expected.extend(sent["windows"].as_object().cloned().unwrap_or_default());
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut differences;
    loop {
        let shown = windows(&query, &key).await?;
        differences = compare(&expected, &shown);
        if differences.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut spans = [0.0; 3];
    for (count, outcome) in spans.iter_mut().zip(["accepted", "skipped", "rejected"]) {
        let with = format!("outcome=\"{outcome}\"");
        *count = ingestion.metric("_otlp_spans_total", &with).await?;
    }
    let [accepted, skipped, rejected] = spans;
    let calls = 2.0 * args.calls as f64;
    let ok = differences.is_empty() && accepted == calls && skipped == calls && rejected == 0.0;
    say(
        "otel",
        &format!(
            "windows exact {}/{}; spans accepted {accepted}, skipped {skipped}, rejected {rejected}: {}",
            expected.len() - differences.len().min(expected.len()),
            expected.len(),
            if ok { "OK" } else { "FAILED" }
        ),
    );
    Ok(
        json!({"mode": "otel", "ok": ok, "calls": args.calls, "windows": expected.len(),
        "differences": differences.iter().take(5).collect::<Vec<_>>(),
        "spans": {"accepted": accepted, "skipped": skipped, "rejected": rejected}}),
    )
}

/// What the spans' windows are checked on: the counts, every token type, and the requests per
/// provider and errors per type.
const FIGURES: [&str; 9] = [
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "providers",
    "error_types",
];

/// The counted figures of every window the metrics API shows the key's tenant, keyed
/// `route|model|minute` (seconds since the epoch).
async fn windows(query: &Service, key: &str) -> anyhow::Result<BTreeMap<String, Value>> {
    let answer: Value = reqwest::Client::new()
        .get(query.url("/v1/metrics?limit=1000"))
        .bearer_auth(key)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let rows = answer["metrics"].as_array().cloned().unwrap_or_default();
    let mut shown = BTreeMap::new();
    for row in rows {
        let start = row["window_start"].as_str().unwrap_or_default();
        let minute = chrono::DateTime::parse_from_rfc3339(start).map_or(0, |t| t.timestamp());
        let key = format!(
            "{}|{}|{minute}",
            row["route"].as_str().unwrap_or_default(),
            row["model"].as_str().unwrap_or_default()
        );
        let figures = FIGURES.map(|f| (f.to_owned(), row[f].clone()));
        shown.insert(key, Value::Object(figures.into_iter().collect()));
    }
    Ok(shown)
}

/// Windows that differ, are missing or should not be there.
fn compare(
    expected: &serde_json::Map<String, Value>,
    shown: &BTreeMap<String, Value>,
) -> Vec<Value> {
    let mut differences = Vec::new();
    for (key, want) in expected {
        match shown.get(key) {
            Some(got) if got == want => {}
            got => differences.push(json!({"window": key, "expected": want, "shown": got})),
        }
    }
    for (key, got) in shown {
        if !expected.contains_key(key) {
            differences.push(json!({"window": key, "expected": null, "shown": got}));
        }
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_differs_when_missing_unexpected_or_off_by_one() {
        let figures = |requests: u64| {
            json!({"requests": requests, "errors": 0,
            "prompt_tokens": 10, "completion_tokens": 5})
        };
        let expected: serde_json::Map<String, Value> =
            [("a".to_owned(), figures(2)), ("b".to_owned(), figures(1))]
                .into_iter()
                .collect();
        let same: BTreeMap<String, Value> =
            [("a".to_owned(), figures(2)), ("b".to_owned(), figures(1))]
                .into_iter()
                .collect();
        assert!(compare(&expected, &same).is_empty());
        let off: BTreeMap<String, Value> =
            [("a".to_owned(), figures(3)), ("c".to_owned(), figures(1))]
                .into_iter()
                .collect();
        let found = compare(&expected, &off);
        let windows: Vec<&str> = found
            .iter()
            .map(|d| d["window"].as_str().unwrap())
            .collect();
        assert_eq!(windows, ["a", "b", "c"]);
    }
}
