//! Malformed input to both HTTP APIs: wrong types, huge numbers, deep nesting, invalid UTF-8,
//! giant payloads, wrong content types, broken query strings, a header no HTTP parser takes,
//! and a slow client. Sent as raw bytes on a connection of their own, since an HTTP client
//! library would refuse to send most of them. Every answer must be a 4xx with a JSON error
//! body that says what is wrong, and the services must keep answering.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::raw::{send, slow_client, Answer};

const JSON: &str = "application/json";

/// A request event with `changes` applied (a `Value::Null` change removes the field), as
/// compact JSON.
fn body(changes: &[(&str, Value)]) -> Vec<u8> {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut event: Map<String, Value> = json!({"request_id": "a-1", "tenant_id": "acme",
        "route": "/chat", "model": "gpt-4o", "timestamp": now, "prompt_tokens": 3})
    .as_object()
    .cloned()
    .expect("an object");
    for (field, value) in changes {
        event.insert((*field).to_owned(), value.clone());
    }
    serde_json::to_vec(&event).expect("JSON values serialize")
}

/// `bytes` with the first `from` replaced by `to`.
fn replaced(bytes: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("the body holds what is replaced");
    [&bytes[..at], to, &bytes[at + from.len()..]].concat()
}

/// (name, path, content type or none, body) for the ingestion API.
fn ingestion_cases() -> Vec<(&'static str, &'static str, Option<&'static str>, Vec<u8>)> {
    let tokens = br#""prompt_tokens":3"#.as_slice();
    let nested = [b"[".repeat(50_000), b"]".repeat(50_000)].concat();
    let giant_batch = [
        b"[".to_vec(),
        (0..10_000)
            .map(|i| {
                body(&[
                    ("request_id", json!(format!("g-{i}"))),
                    ("route", json!("r".repeat(2000))),
                ])
            })
            .collect::<Vec<_>>()
            .join(&b","[..]),
        b"]".to_vec(),
    ]
    .concat();
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let huge_latency = json!({"request_id": "a-1", "timestamp": now, "latency_ms": 1e300,
        "completion_tokens": 1, "finish_reason": "stop"});
    let request = "/v1/llm/request";
    let batch = "/v1/llm/batch";
    vec![
        ("not json", request, Some(JSON), b"hello".to_vec()),
        (
            "truncated json",
            request,
            Some(JSON),
            br#"{"request_id": "a"#.to_vec(),
        ),
        (
            "invalid utf-8",
            request,
            Some(JSON),
            b"{\"request_id\": \"\xff\xfe\"}".to_vec(),
        ),
        (
            "invalid utf-8 in a string",
            request,
            Some(JSON),
            replaced(body(&[("route", json!("x"))]), br#""x""#, b"\"\xc3\x28\""),
        ),
        ("json null", request, Some(JSON), b"null".to_vec()),
        (
            "json array on a single endpoint",
            request,
            Some(JSON),
            b"[1,2]".to_vec(),
        ),
        (
            "wrong types",
            request,
            Some(JSON),
            body(&[
                ("prompt_tokens", json!("many")),
                ("route", json!(7)),
                ("model", json!([])),
            ]),
        ),
        (
            "negative tokens",
            request,
            Some(JSON),
            body(&[("prompt_tokens", json!(-1))]),
        ),
        (
            "huge integer",
            request,
            Some(JSON),
            replaced(
                body(&[]),
                tokens,
                br#""prompt_tokens":10000000000000000000000000000000000000000"#,
            ),
        ),
        (
            "float overflow",
            request,
            Some(JSON),
            replaced(body(&[]), tokens, br#""prompt_tokens":1e999"#),
        ),
        (
            "NaN literal",
            request,
            Some(JSON),
            replaced(body(&[]), tokens, br#""prompt_tokens":NaN"#),
        ),
        ("missing fields", request, Some(JSON), b"{}".to_vec()),
        (
            "timestamp not a time",
            request,
            Some(JSON),
            body(&[("timestamp", json!("yesterday"))]),
        ),
        (
            "timestamp in a year",
            request,
            Some(JSON),
            body(&[("timestamp", json!("2999-01-01T00:00:00Z"))]),
        ),
        (
            "id with spaces",
            request,
            Some(JSON),
            body(&[("request_id", json!("a b"))]),
        ),
        (
            "id of 10k characters",
            request,
            Some(JSON),
            body(&[("request_id", json!("x".repeat(10_000)))]),
        ),
        (
            "control characters",
            request,
            Some(JSON),
            body(&[("route", json!("/a\u{0}b"))]),
        ),
        (
            "deep nesting in metadata",
            request,
            Some(JSON),
            replaced(
                body(&[]),
                tokens,
                &[br#""prompt_tokens":3,"metadata":"#.as_slice(), &nested].concat(),
            ),
        ),
        (
            "giant single body (2 MB)",
            request,
            Some(JSON),
            body(&[("route", json!("r".repeat(2_000_000)))]),
        ),
        ("giant batch (20 MB)", batch, Some(JSON), giant_batch),
        (
            "batch not an array",
            batch,
            Some(JSON),
            br#"{"type": "request"}"#.to_vec(),
        ),
        (
            "batch item without type",
            batch,
            Some(JSON),
            [b"[".to_vec(), body(&[]), b"]".to_vec()].concat(),
        ),
        (
            "batch of wrong items",
            batch,
            Some(JSON),
            br#"[1, "two", null, [], {}]"#.to_vec(),
        ),
        (
            "ndjson garbage",
            batch,
            Some("application/x-ndjson"),
            b"{\n}\n\xff\n".to_vec(),
        ),
        (
            "response with latency 1e300",
            "/v1/llm/response",
            Some(JSON),
            serde_json::to_vec(&huge_latency).expect("JSON"),
        ),
        ("wrong content type", request, Some("text/plain"), body(&[])),
        ("no content type", request, None, body(&[])),
        (
            "another tenant",
            request,
            Some(JSON),
            body(&[("tenant_id", json!("someone-else"))]),
        ),
    ]
}

const QUERY_CASES: [(&str, &str); 15] = [
    ("unknown granularity", "/v1/metrics?granularity=7m"),
    ("limit not a number", "/v1/metrics?limit=lots"),
    ("negative limit", "/v1/metrics?limit=-1"),
    ("huge limit", "/v1/metrics?limit=99999999999999999999999"),
    ("from not a time", "/v1/metrics?from=yesterday"),
    (
        "range backwards",
        "/v1/metrics?from=2024-02-01T00:00:00Z&to=2024-01-01T00:00:00Z",
    ),
    (
        "range of centuries",
        "/v1/summary?from=0001-01-01T00:00:00Z&to=9999-01-01T00:00:00Z",
    ),
    ("bad group_by", "/v1/metrics?group_by=route,route,colour"),
    ("invalid percent-encoding", "/v1/metrics?route=%ZZ%C3%28"),
    (
        "NUL in a name",
        "/v1/metrics?model=gpt%00-4o&granularity=1h",
    ),
    ("control character in a name", "/v1/metrics?route=%1Bchat"),
    ("another tenant", "/v1/metrics?tenant_id=someone-else"),
    ("top not a number", "/v1/summary?top=-"),
    ("unknown path", "/v1/metricz"),
    ("no key", "/v1/metrics"),
];

/// Every case against both APIs; `{"cases", "statuses", "not_clear_4xx"}`.
pub async fn run(ingest: u16, query: u16, key: &str) -> anyhow::Result<Value> {
    let auth = format!("Bearer {key}");
    let mut statuses = std::collections::BTreeSet::new();
    let mut bad = Vec::new();
    let mut cases = 0;
    let mut judge = |api: &str, case: &str, answer: Answer, clear: bool| {
        cases += 1;
        statuses.extend(answer.status);
        if !clear {
            let body = String::from_utf8_lossy(&answer.body[..answer.body.len().min(200)]);
            bad.push(json!({"api": api, "case": case, "status": answer.status, "body": body}));
        }
    };
    for (case, path, content_type, data) in ingestion_cases() {
        let mut headers = vec![("Authorization", auth.as_str())];
        headers.extend(content_type.map(|t| ("Content-Type", t)));
        let answer = send(ingest, "POST", path, &headers, Some(&data)).await;
        let clear = answer.is_clear_4xx();
        judge("ingestion", case, answer, clear);
    }
    let answer = send(
        ingest,
        "POST",
        "/v1/llm/request",
        &[("Content-Type", JSON)],
        Some(&body(&[])),
    )
    .await;
    let clear = answer.is_clear_4xx();
    judge("ingestion", "no key", answer, clear);
    for (case, path) in QUERY_CASES {
        let headers: &[(&str, &str)] = if case == "no key" {
            &[]
        } else {
            &[("Authorization", &auth)]
        };
        let answer = send(query, "GET", path, headers, None).await;
        let clear = answer.is_clear_4xx();
        judge("metrics", case, answer, clear);
    }
    // Not HTTP at all: a header value with control characters. The HTTP layer refuses it
    // before any handler runs, with a bare 400: still a 4xx, and the connection is closed.
    let headers = [("Content-Type", JSON), ("Authorization", "Bearer \x01\x02")];
    let answer = send(
        ingest,
        "POST",
        "/v1/llm/request",
        &headers,
        Some(&body(&[])),
    )
    .await;
    let bare_400 = answer.status == Some(400);
    judge(
        "ingestion",
        "control characters in a header",
        answer,
        bare_400,
    );
    let (answer, took) = slow_client(ingest, "/v1/llm/batch", &auth, Duration::from_secs(30)).await;
    let clear = answer.is_clear_4xx();
    if !clear {
        eprintln!(
            "the slow client got no clear answer in {:.1} s",
            took.as_secs_f64()
        );
    }
    judge("ingestion", "slow client", answer, clear);
    // Still serving after all of it.
    for (api, port) in [("ingestion", ingest), ("metrics", query)] {
        let answer = send(port, "GET", "/health", &[], None).await;
        let up = answer.status == Some(200);
        judge(api, "health after the abuse", answer, up);
    }
    Ok(json!({"cases": cases, "statuses": statuses, "not_clear_4xx": bad}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_malformed_body_is_built_as_meant() {
        let cases = ingestion_cases();
        assert_eq!(cases.len(), 28);
        let find = |name: &str| &cases.iter().find(|c| c.0 == name).expect(name).3;
        assert!(find("NaN literal").windows(3).any(|w| w == b"NaN"));
        assert!(std::str::from_utf8(find("invalid utf-8 in a string")).is_err());
        assert!(find("giant batch (20 MB)").len() > 20_000_000);
    }
}
