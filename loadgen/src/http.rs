//! Load through the ingestion API's HTTP endpoints.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::{events, BatchArgs, QueryArgs, SingleArgs};

/// Batches of `--batch-size` typed events, `--concurrency` batches in flight.
pub async fn batch(args: &BatchArgs) -> anyhow::Result<Value> {
    let url = format!("{}/v1/llm/batch", args.ingestion.url);
    let total = args.events;
    let size = args.batch_size as usize;
    let concurrency = args.concurrency as usize;
    let run = events::run_tag();
    // Bodies are built before the clock starts: the figure is the service's, not ours.
    let bodies: Vec<Vec<u8>> = (0..total)
        .collect::<Vec<_>>()
        .chunks(size)
        .map(|chunk| {
            let items: Vec<Value> = chunk.iter().map(|&i| events::typed(&run, i)).collect();
            serde_json::to_vec(&items).unwrap_or_default()
        })
        .collect();
    let (accepted, seconds) = post_all(&url, "application/json", bodies, concurrency, |_, body| {
        let report: Value = serde_json::from_slice(body).unwrap_or_default();
        report["accepted"].as_u64().unwrap_or(0) as usize
    })
    .await?;
    Ok(json!({
        "mode": "batch",
        "events": total,
        "accepted": accepted,
        "batch_size": size,
        "concurrency": concurrency,
        "seconds": seconds,
        "events_per_sec": accepted as f64 / seconds,
    }))
}

/// Posts every body, `concurrency` in flight, as fast as the service takes them. Returns how
/// many events were accepted (`accepted` reads that from an answer's status and body) and the
/// seconds it took; building the bodies is not timed.
pub async fn post_all(
    url: &str,
    content_type: &'static str,
    bodies: Vec<Vec<u8>>,
    concurrency: usize,
    accepted: fn(u16, &[u8]) -> usize,
) -> anyhow::Result<(usize, f64)> {
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (bodies, next, total, client, url) = (
            bodies.clone(),
            next.clone(),
            total.clone(),
            client.clone(),
            url.to_owned(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let response = client
                    .post(&url)
                    .header("content-type", content_type)
                    .body(body.clone())
                    .send()
                    .await;
                let Ok(response) = response else { continue };
                let status = response.status().as_u16();
                if let Ok(answer) = response.bytes().await {
                    total.fetch_add(accepted(status, &answer), Ordering::Relaxed);
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    Ok((
        total.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    ))
}

/// Single-event posts, `--concurrency` in flight, with latency percentiles.
pub async fn single(args: &SingleArgs) -> anyhow::Result<Value> {
    let base = &args.ingestion.url;
    let total = args.requests;
    let concurrency = args.concurrency as usize;
    let run = events::run_tag();
    let next = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (next, client, base, run) = (next.clone(), client.clone(), base.clone(), run.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let mut accepted = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let (path, body) = if i.is_multiple_of(2) {
                    ("request", events::request(&run, i / 2))
                } else {
                    ("response", events::response(&run, i / 2))
                };
                let sent = Instant::now();
                let response = client
                    .post(format!("{base}/v1/llm/{path}"))
                    .json(&body)
                    .send()
                    .await;
                let micros = sent.elapsed().as_micros() as u64;
                if response.is_ok_and(|r| r.status().as_u16() == 202) {
                    accepted += 1;
                }
                latencies.saturating_record(micros.max(1));
            }
            (latencies, accepted)
        }));
    }
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut accepted = 0;
    for w in workers {
        let (h, n) = w.await?;
        latencies.add(h)?;
        accepted += n;
    }
    let seconds = started.elapsed().as_secs_f64();
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "mode": "single",
        "requests": total,
        "accepted": accepted,
        "concurrency": concurrency,
        "seconds": seconds,
        "requests_per_sec": accepted as f64 / seconds,
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
    }))
}

/// The row count of a query's answer; the rows themselves are skipped, not built.
#[derive(serde::Deserialize)]
struct Answer {
    #[serde(default)]
    count: u64,
}

/// The row count of an answer. A range answer ends with its count (`],"count":N,` and the
/// granularity), read from there: skipping a few hundred KiB of items with a JSON parser
/// would cost this client more CPU than the service spends writing them, on the machine the
/// service shares. Any other answer is parsed.
fn answer_rows(body: &[u8]) -> u64 {
    const MARK: &[u8] = b"],\"count\":";
    let tail = &body[body.len().saturating_sub(96)..];
    let counted = tail
        .windows(MARK.len())
        .rposition(|w| w == MARK)
        .and_then(|at| {
            let digits = &tail[at + MARK.len()..];
            let end = digits.iter().position(|b| !b.is_ascii_digit())?;
            std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
        });
    counted.unwrap_or_else(|| serde_json::from_slice::<Answer>(body).map_or(0, |a| a.count))
}

/// GETs `--path` (with `--key` as bearer token, if given) `--requests` times, or for
/// `--seconds`, from `--concurrency` workers; every answer must be 200.
pub async fn query(args: &QueryArgs) -> anyhow::Result<Value> {
    let url = format!("{}{}", args.url, args.path);
    let key = args.key.clone();
    let total = args.requests;
    let concurrency = args.concurrency as usize;
    let next = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let until = args
        .seconds
        .map(|s| started + std::time::Duration::from_secs_f64(s.max(0.0)));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (next, client, url, key) = (next.clone(), client.clone(), url.clone(), key.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let (mut made, mut ok, mut rows) = (0usize, 0usize, 0u64);
            while match until {
                Some(until) => Instant::now() < until,
                None => next.fetch_add(1, Ordering::Relaxed) < total,
            } {
                made += 1;
                let mut request = client.get(&url);
                if !key.is_empty() {
                    request = request.bearer_auth(&key);
                }
                let sent = Instant::now();
                let response = request.send().await;
                // Timed to the answer's last byte, as an HTTP benchmark does: reading the
                // JSON (a few hundred KiB for a long range) is the client's work, done after.
                let mut body = None;
                if let Ok(r) = response {
                    if r.status().as_u16() == 200 {
                        body = r.bytes().await.ok();
                    }
                }
                latencies.saturating_record((sent.elapsed().as_micros() as u64).max(1));
                if let Some(body) = body {
                    ok += 1;
                    rows += answer_rows(&body);
                }
            }
            (latencies, made, ok, rows)
        }));
    }
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut made, mut ok, mut rows) = (0, 0, 0);
    for w in workers {
        let (h, m, n, r) = w.await?;
        latencies.add(h)?;
        made += m;
        ok += n;
        rows += r;
    }
    let seconds = started.elapsed().as_secs_f64();
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "mode": "query",
        "url": url,
        "requests": made,
        "ok": ok,
        "rows_per_answer": rows as f64 / ok.max(1) as f64,
        "concurrency": concurrency,
        "seconds": seconds,
        "requests_per_sec": ok as f64 / seconds,
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
    }))
}

#[cfg(test)]
mod tests {
    use super::answer_rows;

    #[test]
    fn rows_are_read_from_a_range_answers_tail_and_any_other_answer_is_parsed() {
        let item = r#"{"window_start":"2026-12-07T10:00:00Z","count":7,"route":"],\"count\":9,"}"#;
        let range = format!(r#"{{"metrics":[{item},{item}],"count":2,"granularity":"5m"}}"#);
        assert_eq!(answer_rows(range.as_bytes()), 2);
        let long = format!(
            r#"{{"metrics":[{}],"count":578,"granularity":"1h"}}"#,
            vec![item; 578].join(",")
        );
        assert_eq!(answer_rows(long.as_bytes()), 578);
        // No tail to read: parsed, and a nested count is not the answer's.
        assert_eq!(answer_rows(br#"{"count":3,"totals":{"count":5}}"#), 3);
        assert_eq!(answer_rows(br#"{"totals":{"count":5}}"#), 0);
        assert_eq!(answer_rows(b"not json"), 0);
    }
}
