//! API keys on ingestion, against keys in the real Postgres: each key writes only for its
//! tenant, responses carry the key's tenant, revoked keys and keys over their rate are refused.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use infra::keys::{Auth, KeyCache};
use ingestion_api::limit::RateLimiter;
use ingestion_api::routes::Service;
use serde_json::{json, Value};
use sqlx::PgPool;
use tower::ServiceExt;

use crate::helpers::*;

async fn pool() -> PgPool {
    let dsn = database_url();
    let pool = infra::db::connect(&dsn, 2).await.expect("Postgres answers");
    infra::db::migrate(&pool).await.expect("migrations apply");
    pool
}

fn keyed_router(
    pool: &PgPool,
    publisher: Arc<RecordingPublisher>,
    rate: Option<(u32, u32)>,
) -> Service {
    // No caching, so a revocation shows at once.
    let auth = Auth::Keys(Arc::new(KeyCache::new(pool.clone(), Duration::ZERO)));
    let limiter = rate.map(|(per_sec, burst)| Arc::new(RateLimiter::new(per_sec, burst)));
    crate::helpers::keyed_router(publisher, auth, limiter)
}

async fn post(
    app: &Service,
    path: &str,
    key: Option<&str>,
    body: &Value,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut request = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn request_for(tenant: &str, id: &str) -> Value {
    let mut r = request_event(id);
    r["tenant_id"] = json!(tenant);
    r
}

#[tokio::test]
async fn a_key_writes_only_for_its_tenant_and_stamps_its_responses() {
    let pool = pool().await;
    let (own, other) = (unique("tenant"), unique("tenant"));
    let (_, key) = infra::keys::create(&pool, &own, "app").await.unwrap();
    let publisher = RecordingPublisher::new(Mode::Acknowledge);
    let app = keyed_router(&pool, publisher.clone(), None);

    let (status, headers, body) =
        post(&app, "/v1/llm/request", None, &request_for(&own, "r-1")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
    );
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, _) = post(
        &app,
        "/v1/llm/request",
        Some("slk_unknown"),
        &request_for(&own, "r-1"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = post(
        &app,
        "/v1/llm/request",
        Some(&key),
        &request_for(&other, "r-1"),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{body}"
    );
    assert!(
        publisher.records().is_empty(),
        "nothing refused was written"
    );

    let (status, _, _) = post(
        &app,
        "/v1/llm/request",
        Some(&key),
        &request_for(&own, "r-1"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // A response naming another tenant is stamped with the key's.
    let mut response = response_event("r-1");
    response["tenant_id"] = json!(other);
    let (status, _, _) = post(&app, "/v1/llm/response", Some(&key), &response).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let written: Vec<Value> = publisher
        .records()
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    assert_eq!(written.len(), 2);
    assert_eq!(written[0]["tenant_id"], json!(own));
    assert_eq!(written[1]["tenant_id"], json!(own), "{:?}", written[1]);

    // In a batch, another tenant's items are rejected by name and the rest written.
    let mut mine = request_for(&own, "r-2");
    mine["type"] = json!("request");
    let mut theirs = request_for(&other, "r-3");
    theirs["type"] = json!("request");
    let (status, _, body) = post(&app, "/v1/llm/batch", Some(&key), &json!([mine, theirs])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["rejected"][0]["index"], 1);
    assert_eq!(body["rejected"][0]["fields"][0]["field"], "tenant_id");
    assert_eq!(publisher.records().len(), 3);
}

#[tokio::test]
async fn a_revoked_key_is_refused() {
    let pool = pool().await;
    let tenant = unique("tenant");
    let (info, key) = infra::keys::create(&pool, &tenant, "").await.unwrap();
    let publisher = RecordingPublisher::new(Mode::Acknowledge);
    let app = keyed_router(&pool, publisher.clone(), None);
    assert_eq!(
        post(
            &app,
            "/v1/llm/request",
            Some(&key),
            &request_for(&tenant, "a")
        )
        .await
        .0,
        StatusCode::ACCEPTED
    );
    assert!(infra::keys::revoke(&pool, info.id).await.unwrap());
    assert_eq!(
        post(
            &app,
            "/v1/llm/request",
            Some(&key),
            &request_for(&tenant, "b")
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(publisher.records().len(), 1);
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after() {
    let pool = pool().await;
    let tenant = unique("tenant");
    let (_, key) = infra::keys::create(&pool, &tenant, "").await.unwrap();
    let (_, other_key) = infra::keys::create(&pool, &tenant, "").await.unwrap();
    let publisher = RecordingPublisher::new(Mode::Acknowledge);
    // One event a second, three at once.
    let app = keyed_router(&pool, publisher.clone(), Some((1, 3)));
    for i in 0..3 {
        let (status, _, _) = post(
            &app,
            "/v1/llm/request",
            Some(&key),
            &request_for(&tenant, &format!("r-{i}")),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let (status, headers, body) = post(
        &app,
        "/v1/llm/request",
        Some(&key),
        &request_for(&tenant, "r-3"),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    assert_eq!(headers["retry-after"], "1");
    // With no event of its rate left, the key's batch is refused before its body is read: even
    // a body that is no batch gets the 429, not the 400 it gets from a key with room.
    let no_batch = json!({"not": "a batch"});
    let (status, headers, body) = post(&app, "/v1/llm/batch", Some(&key), &no_batch).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    assert_eq!(headers["retry-after"], "1");
    let (status, _, _) = post(&app, "/v1/llm/batch", Some(&other_key), &no_batch).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Another key has a bucket of its own; a batch counts each of its events.
    let mut item = request_for(&tenant, "b-1");
    item["type"] = json!("request");
    let (status, _, _) = post(
        &app,
        "/v1/llm/batch",
        Some(&other_key),
        &json!([item.clone(), item.clone()]),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _, _) = post(
        &app,
        "/v1/llm/batch",
        Some(&other_key),
        &json!([item.clone(), item]),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        publisher.records().len(),
        5,
        "nothing over the rate was written"
    );
}
