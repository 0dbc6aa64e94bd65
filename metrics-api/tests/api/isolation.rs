//! Tenant isolation end to end: the ingestion API with keys, the real broker, the processor
//! binary and the query API. Another tenant's key can neither write for a tenant, nor change
//! its windows by posting responses for its request ids, nor read them.

use chrono::{TimeDelta, Utc};
use serde_json::{json, Value};

use crate::helpers::*;

async fn post(client: &reqwest::Client, base: &str, path: &str, key: &str, body: Value) -> u16 {
    client
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("the ingestion API answers")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_key_cannot_write_alter_or_read_a_tenants_windows() {
    let mut world = World::new().await;
    world.ensure_topics().await;
    let victim = world.tenant.clone();
    let stranger = unique("stranger-");
    let (_, victim_key) = infra::keys::create(&world.pool, &victim, "app")
        .await
        .unwrap();
    let (_, stranger_key) = infra::keys::create(&world.pool, &stranger, "app")
        .await
        .unwrap();

    let base = world.start_ingestion().await;
    let client = reqwest::Client::new();

    let at = Utc::now() - TimeDelta::minutes(5);
    let request = |tenant: &str, id: &str| {
        json!({"request_id": id, "tenant_id": tenant, "route": "/chat", "model": "gpt-4o",
               "timestamp": at.to_rfc3339(), "prompt_tokens": 100})
    };
    let response = |id: &str, latency: u64, error: bool| {
        let mut r = json!({"request_id": id, "timestamp": (at + TimeDelta::seconds(1)).to_rfc3339(),
                           "latency_ms": latency, "completion_tokens": 20, "finish_reason": "stop"});
        if error {
            r["error"] = json!("injected");
        }
        r
    };

    // The stranger cannot write an event for the victim.
    assert_eq!(
        post(
            &client,
            &base,
            "/v1/llm/request",
            &stranger_key,
            request(&victim, "forged")
        )
        .await,
        403
    );
    // The victim's two calls; the stranger answers both first, even claiming the victim's tenant.
    assert_eq!(
        post(
            &client,
            &base,
            "/v1/llm/request",
            &victim_key,
            request(&victim, "r1")
        )
        .await,
        202
    );
    assert_eq!(
        post(
            &client,
            &base,
            "/v1/llm/request",
            &victim_key,
            request(&victim, "r2")
        )
        .await,
        202
    );
    for id in ["r1", "r2"] {
        let mut forged = response(id, 99_000, true);
        forged["tenant_id"] = json!(victim);
        assert_eq!(
            post(&client, &base, "/v1/llm/response", &stranger_key, forged).await,
            202
        );
    }
    // Only r1 gets its real response; r2 will time out.
    assert_eq!(
        post(
            &client,
            &base,
            "/v1/llm/response",
            &victim_key,
            response("r1", 100, false)
        )
        .await,
        202
    );
    // A request of the stranger's own with the same id: the stranger's forged response, stamped
    // with the stranger's tenant, pairs with it, in the stranger's windows only.
    assert_eq!(
        post(
            &client,
            &base,
            "/v1/llm/request",
            &stranger_key,
            request(&stranger, "r1")
        )
        .await,
        202
    );

    world.start_processor();
    world.wait_stored(&victim, 2).await;
    world.wait_stored(&stranger, 1).await;

    let api = Api::start(&world.dsn, true).await;
    let (status, body) = api.get("/v1/metrics", Some(&victim_key)).await;
    assert_eq!(status, 200, "{body}");
    let row = &body["metrics"][0];
    assert_eq!(body["count"], 1, "{body}");
    assert_eq!(
        (
            row["requests"].as_i64(),
            row["errors"].as_i64(),
            row["timeouts"].as_i64(),
            row["avg_latency_ms"].as_f64()
        ),
        (Some(2), Some(0), Some(1), Some(100.0)),
        "the victim's window holds its own response only: {row}"
    );
    let (_, body) = api.get("/v1/metrics", Some(&stranger_key)).await;
    let row = &body["metrics"][0];
    assert_eq!(
        (
            row["requests"].as_i64(),
            row["errors"].as_i64(),
            row["avg_latency_ms"].as_f64()
        ),
        (Some(1), Some(1), Some(99_000.0)),
        "{body}"
    );
    let (status, _) = api
        .get(
            &format!("/v1/metrics?tenant_id={victim}"),
            Some(&stranger_key),
        )
        .await;
    assert_eq!(status, 403, "the stranger cannot read the victim's windows");
}
