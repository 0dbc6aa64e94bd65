//! `check`: what StreamLens stored, against what the oracle stream must give (the fault runs).
//!
//! Waits until every stored window holds what the oracle expects, or a deadline passes (a
//! total that matches is not enough: one window's surplus can hide another's pending
//! timeout), then compares every window: counts and sums exactly, p95 within the histogram's
//! error bound (2 significant digits: under 1%, plus the 1 ms unit). Then the last record of
//! every window on the metrics topic must equal the stored row, and every five-minute, hourly
//! and daily roll-up must hold the sums of the minute rows it covers. The report's `ok` says
//! whether all of it held.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::{Brokers, LatestArgs};

/// The fields of a window that must equal the oracle's exactly.
const FIELDS: [&str; 7] = [
    "requests",
    "errors",
    "timeouts",
    "completed",
    "latency_sum_ms",
    "prompt_tokens",
    "completion_tokens",
];
/// The fields of the last `llm.metrics` record that must equal the stored row.
const TOPIC_FIELDS: [&str; 5] = [
    "requests",
    "errors",
    "timeouts",
    "prompt_tokens",
    "completion_tokens",
];
const STORED: &str = r#"SELECT COALESCE(json_agg(t), '[]')::text FROM (
    SELECT tenant_id, route, model,
      to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS window_start,
      requests, errors, timeouts, completed, latency_sum_ms, prompt_tokens, completion_tokens,
      p95_latency_ms
    FROM llm_metrics) t"#;
/// Roll-up buckets whose counts and sums differ from those of the minute rows they cover (a
/// bucket missing on either side counts as zeros), in one snapshot: both are written in the
/// same transaction. Every grouping is checked: per series, and with routes, models or both
/// merged ('' in their place).
const ROLLUPS_DIFFERING: &str = r#"
    WITH minutes AS (
        SELECT tenant_id, COALESCE(route, '') AS route, COALESCE(model, '') AS model,
               s.seconds AS bucket_seconds,
               to_timestamp(floor(extract(epoch FROM window_start) / s.seconds) * s.seconds)
                   AS bucket_start,
               sum(requests) AS requests, sum(errors) AS errors, sum(timeouts) AS timeouts,
               sum(completed) AS completed, sum(latency_sum_ms) AS latency_sum_ms,
               sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens
        FROM llm_metrics CROSS JOIN (VALUES (300), (3600), (86400)) AS s(seconds)
        GROUP BY tenant_id, s.seconds, 5, GROUPING SETS ((route, model), (model), (route), ())),
    buckets AS (
        SELECT tenant_id, route, model, bucket_seconds, bucket_start, requests, errors,
               timeouts, completed, latency_sum_ms, prompt_tokens, completion_tokens
        FROM llm_metrics_rollups)
    SELECT count(*) FROM minutes m FULL JOIN buckets b
        USING (tenant_id, route, model, bucket_seconds, bucket_start)
    WHERE (COALESCE(m.requests, 0), COALESCE(m.errors, 0), COALESCE(m.timeouts, 0),
           COALESCE(m.completed, 0), COALESCE(m.latency_sum_ms, 0),
           COALESCE(m.prompt_tokens, 0), COALESCE(m.completion_tokens, 0))
       IS DISTINCT FROM
          (COALESCE(b.requests, 0), COALESCE(b.errors, 0), COALESCE(b.timeouts, 0),
           COALESCE(b.completed, 0), COALESCE(b.latency_sum_ms, 0),
           COALESCE(b.prompt_tokens, 0), COALESCE(b.completion_tokens, 0))"#;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The oracle's output: the windows the stream must produce
    #[arg(long)]
    pub oracle: std::path::PathBuf,
    /// The database the processor writes
    #[arg(long)]
    pub dsn: String,
    #[command(flatten)]
    pub brokers: Brokers,
    /// The metrics topic
    #[arg(long, default_value = "llm.metrics")]
    pub metrics_topic: String,
    /// How long to wait for the stored windows to reach the oracle's
    #[arg(long, default_value_t = 210)]
    pub wait_secs: u64,
    /// A fault run's scenario: with --stream and --faults, its summary goes to stderr, and a
    /// refusal by the ingestion API with any status but 503 fails the check
    #[arg(long, requires_all = ["stream", "faults"])]
    pub scenario: Option<String>,
    /// What the stream posted (the oracle's report)
    #[arg(long)]
    pub stream: Option<std::path::PathBuf>,
    /// The faults injected, one per line
    #[arg(long)]
    pub faults: Option<std::path::PathBuf>,
}

type Key = (String, String, String, String);
type Windows = BTreeMap<Key, Value>;

fn key(row: &Value) -> Key {
    let text = |f: &str| row[f].as_str().unwrap_or_default().to_owned();
    (
        text("tenant_id"),
        text("route"),
        text("model"),
        text("window_start"),
    )
}

fn by_key(rows: &[Value]) -> Windows {
    rows.iter().map(|r| (key(r), r.clone())).collect()
}

async fn stored(pool: &PgPool) -> Option<Windows> {
    let text: String = sqlx::query_scalar(STORED).fetch_one(pool).await.ok()?;
    let rows: Vec<Value> = serde_json::from_str(&text).ok()?;
    Some(by_key(&rows))
}

fn settled(rows: &Windows, expected: &Windows) -> bool {
    rows.keys().eq(expected.keys())
        && expected
            .iter()
            .all(|(k, e)| FIELDS.iter().all(|f| rows[k][f] == e[f]))
}

fn count(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// Every difference between the stored windows and the oracle's, with what it cost.
fn compare(rows: &Windows, expected: &Windows) -> (Vec<Value>, i64, i64) {
    let (mut wrong, mut lost, mut extra) = (Vec::new(), 0, 0);
    for (k, e) in expected {
        let Some(r) = rows.get(k) else {
            wrong.push(json!({"window": k, "missing": true}));
            lost += count(&e["requests"]);
            continue;
        };
        let mut diff = serde_json::Map::new();
        for f in FIELDS {
            if e[f] != r[f] {
                diff.insert(f.to_owned(), json!([e[f], r[f]]));
            }
        }
        lost += (count(&e["requests"]) - count(&r["requests"])).max(0);
        extra += (count(&r["requests"]) - count(&e["requests"])).max(0);
        if let (Some(want), Some(got)) =
            (e["p95_latency_ms"].as_f64(), r["p95_latency_ms"].as_f64())
        {
            if (got - want).abs() > want * 0.01 + 1.0 {
                diff.insert("p95_latency_ms".into(), json!([want, got]));
            }
        }
        if !diff.is_empty() {
            wrong.push(json!({"window": k, "expected_vs_stored": diff}));
        }
    }
    for (k, r) in rows {
        if !expected.contains_key(k) {
            wrong.push(json!({"window": k, "unexpected": true}));
            extra += count(&r["requests"]);
        }
    }
    (wrong, lost, extra)
}

/// The stored windows whose last `llm.metrics` record differs, once the topic caught up.
async fn topic_differences(args: &CheckArgs, rows: &Windows) -> anyhow::Result<Vec<Key>> {
    let latest = LatestArgs {
        brokers: Brokers {
            brokers: args.brokers.brokers.clone(),
        },
        topic: args.metrics_topic.clone(),
    };
    let mut differing = Vec::new();
    for _ in 0..30 {
        let records = crate::consume::latest(&latest)?;
        let last = by_key(records.as_array().map(Vec::as_slice).unwrap_or_default());
        differing = rows
            .iter()
            .filter(|(k, r)| {
                last.get(*k)
                    .is_none_or(|l| TOPIC_FIELDS.iter().any(|f| l[f] != r[f]))
            })
            .map(|(k, _)| k.clone())
            .collect();
        if differing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(differing)
}

pub async fn run(args: &CheckArgs) -> anyhow::Result<Value> {
    let oracle: Value = serde_json::from_slice(&std::fs::read(&args.oracle)?)?;
    let windows = oracle["windows"].as_array().map(Vec::as_slice);
    let expected = by_key(windows.unwrap_or_default());
    let pool = infra::db::connect(&args.dsn, 2).await?;

    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    let mut rows = None;
    while Instant::now() < deadline {
        if let Some(now) = stored(&pool).await {
            let done = settled(&now, &expected);
            rows = Some(now);
            if done {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let rows = rows.unwrap_or_default();
    let (wrong, lost, extra) = compare(&rows, &expected);
    let exact = expected.len()
        - wrong
            .iter()
            .filter(|w| w.get("unexpected").is_none())
            .count();
    let topic_wrong = topic_differences(args, &rows).await?;
    let rollups_differing: i64 = sqlx::query_scalar(ROLLUPS_DIFFERING)
        .fetch_one(&pool)
        .await?;
    let mut report = json!({
        "windows": expected.len(),
        "requests_expected": expected.values().map(|w| count(&w["requests"])).sum::<i64>(),
        "requests_stored": rows.values().map(|w| count(&w["requests"])).sum::<i64>(),
        "windows_exact": exact,
        "requests_lost": lost,
        "requests_counted_twice": extra,
        "metrics_topic_windows_equal": rows.len() - topic_wrong.len(),
        "rollups_differing": rollups_differing,
        "ok": wrong.is_empty() && topic_wrong.is_empty() && rollups_differing == 0,
    });
    if !wrong.is_empty() {
        report["first_differences"] = json!(wrong.iter().take(5).collect::<Vec<_>>());
    }
    if !topic_wrong.is_empty() {
        report["metrics_topic_differs"] = json!(topic_wrong.iter().take(5).collect::<Vec<_>>());
    }
    if let (Some(scenario), Some(stream), Some(faults)) =
        (&args.scenario, &args.stream, &args.faults)
    {
        let stream: Value = serde_json::from_slice(&std::fs::read(stream)?)?;
        let faults = std::fs::read_to_string(faults)?;
        if !only_503(&stream) {
            report["ok"] = json!(false);
            report["refusals_other_than_503"] = stream["failures"].clone();
        }
        eprintln!("{}", summary(scenario, &stream, &faults, &report));
    }
    Ok(report)
}

/// While the broker is away the ingestion API must say 503 (try again), nothing else.
fn only_503(stream: &Value) -> bool {
    let failures = stream["failures"].as_object();
    failures.is_none_or(|f| f.keys().all(|status| status == "503"))
}

fn thousands(v: &Value) -> String {
    let digits = count(v).to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Three lines a person reads: the faults, what was sent, what was found.
fn summary(scenario: &str, stream: &Value, faults: &str, check: &Value) -> String {
    let faults: Vec<&str> = faults
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let faults = if faults.is_empty() {
        "none".to_owned()
    } else {
        faults.join("; ")
    };
    let refusals = match stream["failures"].as_object() {
        Some(f) if !f.is_empty() => Value::Object(f.clone()).to_string(),
        _ => "none".to_owned(),
    };
    let verdict = if check["ok"] == json!(true) {
        "OK".to_owned()
    } else {
        let detail = [
            "first_differences",
            "metrics_topic_differs",
            "refusals_other_than_503",
            "rollups_differing",
        ]
        .iter()
        .find_map(|k| check.get(*k));
        format!("DIFFERENT {}", detail.unwrap_or(&Value::Null))
    };
    format!(
        "{scenario:<9} faults: {faults}\n          sent {} calls, {} events (response first {}, duplicated {}, \
         late {}, unanswered {}); batches retried {}, refusals by status {refusals}\n          \
         windows exact {}/{}, requests stored {}/{}, lost {}, counted twice {}, llm.metrics equal {}, \
         roll-ups differing {}: {verdict}",
        thousands(&stream["calls"]),
        thousands(&stream["events_posted"]),
        stream["response_first"],
        stream["duplicated"],
        stream["late"],
        stream["unanswered"],
        stream["batches_retried"],
        check["windows_exact"],
        check["windows"],
        thousands(&check["requests_stored"]),
        thousands(&check["requests_expected"]),
        check["requests_lost"],
        check["requests_counted_twice"],
        check["metrics_topic_windows_equal"],
        check["rollups_differing"],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(route: &str, requests: i64, p95: f64) -> Value {
        json!({"tenant_id": "t", "route": route, "model": "m", "window_start": "2026-12-06T10:00:00Z",
               "requests": requests, "errors": 0, "timeouts": 0, "completed": requests,
               "latency_sum_ms": 10 * requests, "prompt_tokens": 1, "completion_tokens": 1,
               "p95_latency_ms": p95})
    }

    #[test]
    fn equal_windows_settle_and_differences_are_counted_as_lost_or_twice() {
        let expected = by_key(&[window("/a", 3, 100.0), window("/b", 2, 100.0)]);
        assert!(settled(&expected.clone(), &expected));
        assert_eq!(compare(&expected, &expected), (vec![], 0, 0));

        // One window short of a call, one with a call too many, one nobody expected.
        let stored = by_key(&[
            window("/a", 2, 100.0),
            window("/b", 3, 100.0),
            window("/c", 4, 1.0),
        ]);
        assert!(!settled(&stored, &expected));
        let (wrong, lost, extra) = compare(&stored, &expected);
        assert_eq!((wrong.len(), lost, extra), (3, 1, 1 + 4));
        let missing = compare(&BTreeMap::new(), &expected);
        assert_eq!((missing.0.len(), missing.1), (2, 5));
    }

    #[test]
    fn the_summary_reads_as_before_and_only_503_refusals_pass() {
        let stream = json!({"calls": 17976, "events_posted": 37161, "response_first": 881,
            "duplicated": 855, "late": 880, "unanswered": 501, "batches_retried": 0, "failures": {}});
        let check = json!({"ok": true, "windows_exact": 135, "windows": 135, "requests_stored": 17976,
            "requests_expected": 17976, "requests_lost": 0, "requests_counted_twice": 0,
            "metrics_topic_windows_equal": 135, "rollups_differing": 0});
        let text = summary(
            "scale",
            &stream,
            "scaled 1 -> 2 instances\n  every partition committing again after 4 s\n",
            &check,
        );
        assert_eq!(
            text,
            "scale     faults: scaled 1 -> 2 instances; every partition committing again after 4 s\n          \
             sent 17,976 calls, 37,161 events (response first 881, duplicated 855, late 880, unanswered 501); \
             batches retried 0, refusals by status none\n          windows exact 135/135, requests stored \
             17,976/17,976, lost 0, counted twice 0, llm.metrics equal 135, roll-ups differing 0: OK"
        );
        assert!(only_503(&stream));
        assert!(only_503(&json!({"failures": {"503": 2}})));
        assert!(!only_503(&json!({"failures": {"503": 2, "500": 1}})));
    }

    #[test]
    fn p95_may_differ_by_the_histograms_error_but_no_more() {
        let expected = by_key(&[window("/a", 3, 1000.0)]);
        let within = by_key(&[window("/a", 3, 1010.0)]);
        assert!(compare(&within, &expected).0.is_empty());
        let beyond = by_key(&[window("/a", 3, 1012.0)]);
        assert_eq!(compare(&beyond, &expected).0.len(), 1);
    }
}
