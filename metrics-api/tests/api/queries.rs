//! Each query shape, answered from windows the processor wrote, checked against the calls.

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use metrics_core::histogram;
use serde_json::Value;

use crate::helpers::*;

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().expect("a time").parse().expect("RFC 3339")
}

/// Requests, errors and the merged p50/p95/p99 of calls grouped by `key`.
fn expected<K: Ord>(calls: &[Call], key: impl Fn(&Call) -> K) -> BTreeMap<K, (i64, i64, [u64; 3])> {
    let mut groups: BTreeMap<K, Vec<&Call>> = BTreeMap::new();
    for c in calls {
        groups.entry(key(c)).or_default().push(c);
    }
    groups
        .into_iter()
        .map(|(k, cs)| {
            let mut h = histogram::new();
            for c in &cs {
                histogram::record(&mut h, c.latency_ms);
            }
            let errors = cs.iter().filter(|c| c.error).count() as i64;
            let q = [0.5, 0.95, 0.99].map(|q| h.value_at_quantile(q));
            (k, (cs.len() as i64, errors, q))
        })
        .collect()
}

fn figures(item: &Value) -> (i64, i64, [u64; 3]) {
    let f = |name: &str| item[name].as_f64().unwrap() as u64;
    (
        item["requests"].as_i64().unwrap(),
        item["errors"].as_i64().unwrap(),
        [
            f("p50_latency_ms"),
            f("p95_latency_ms"),
            f("p99_latency_ms"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_shape_answers_from_the_windows_the_processor_wrote() {
    let mut world = World::new().await;
    let calls = calls(&world.tenant);
    world.process(&calls).await;
    let api = Api::start(&world.dsn, false).await;
    let t = &world.tenant;

    // The original query: newest windows first, 60 by default, one per (minute, route, model).
    let (status, body) = api.get(&format!("/v1/metrics?tenant_id={t}"), None).await;
    assert_eq!(status, 200, "{body}");
    let per_window = expected(&calls, |c| {
        (
            c.at.duration_trunc(TimeDelta::minutes(1)).unwrap(),
            c.route,
            c.model,
        )
    });
    assert_eq!(body["count"], per_window.len().min(60) as i64);
    let items = body["metrics"].as_array().unwrap();
    let starts: Vec<_> = items.iter().map(|i| time(&i["window_start"])).collect();
    assert!(starts.windows(2).all(|w| w[0] >= w[1]), "newest first");
    for item in items {
        let key = (
            time(&item["window_start"]),
            item["route"].as_str().unwrap(),
            item["model"].as_str().unwrap(),
        );
        let want = per_window
            .iter()
            .find(|(k, _)| (k.0, k.1, k.2) == key)
            .map(|(_, v)| *v);
        assert_eq!(Some(figures(item)), want, "{item}");
    }

    // Filters and limit.
    let (_, body) = api
        .get(
            &format!("/v1/metrics?tenant_id={t}&route=/embed&model=gpt-4o&limit=3"),
            None,
        )
        .await;
    assert_eq!(body["count"], 3);
    assert!(body["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["route"] == "/embed" && i["model"] == "gpt-4o"));

    // A time range: the first five minutes only.
    let base = calls.iter().map(|c| c.at).min().unwrap();
    let range = format!(
        "from={}&to={}",
        base.to_rfc3339(),
        (base + TimeDelta::minutes(5)).to_rfc3339()
    )
    .replace('+', "%2B");
    let (_, body) = api
        .get(
            &format!("/v1/metrics?tenant_id={t}&{range}&limit=1000"),
            None,
        )
        .await;
    let in_range: i64 = calls
        .iter()
        .filter(|c| c.at < base + TimeDelta::minutes(5))
        .count() as i64;
    let got: i64 = body["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["requests"].as_i64().unwrap())
        .sum();
    assert_eq!(got, in_range);

    // 5-minute roll-up per model: sums add up, percentiles equal one histogram of all values.
    let (status, body) = api
        .get(
            &format!(
                "/v1/metrics?tenant_id={t}&granularity=5m&group_by=model&from={}",
                base.to_rfc3339().replace('+', "%2B")
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let want = expected(&calls, |c| {
        (c.at.duration_trunc(TimeDelta::minutes(5)).unwrap(), c.model)
    });
    let items = body["metrics"].as_array().unwrap();
    assert_eq!(items.len(), want.len(), "{body}");
    for item in items {
        assert_eq!(item["route"], Value::Null);
        assert_eq!(
            time(&item["window_end"]) - time(&item["window_start"]),
            TimeDelta::minutes(5)
        );
        let key = (time(&item["window_start"]), item["model"].as_str().unwrap());
        let w = want
            .iter()
            .find(|(k, _)| (k.0, k.1) == key)
            .map(|(_, v)| *v);
        assert_eq!(Some(figures(item)), w, "{item}");
    }

    // 1-hour roll-up of the whole tenant: one bucket holding everything.
    let (_, body) = api
        .get(
            &format!(
                "/v1/metrics?tenant_id={t}&granularity=1h&group_by=tenant&from={}",
                base.to_rfc3339().replace('+', "%2B")
            ),
            None,
        )
        .await;
    let all = expected(&calls, |_| ());
    assert_eq!(body["count"], 1, "{body}");
    let bucket = &body["metrics"][0];
    assert_eq!(figures(bucket), all[&()]);
    // Errors per type and requests per provider, merged from the stored rows' breakdowns.
    let count = |f: &dyn Fn(&&Call) -> bool| calls.iter().filter(f).count();
    let typed = count(&|c| c.error_type.is_some());
    let untyped = count(&|c| c.error && c.error_type.is_none());
    assert!(typed > 0 && untyped > 0, "both kinds of failure are made");
    assert_eq!(
        bucket["error_types"],
        serde_json::json!({"rate_limit": typed, "_OTHER": untyped})
    );
    let named = count(&|c| c.provider.is_some());
    assert_eq!(bucket["providers"], serde_json::json!({"openai": named}));
    assert_eq!(bucket["reasoning_tokens"], 3 * typed);
    // The cost by token type adds up to the whole (to float rounding of the USD figures).
    let by_type: f64 = bucket["cost_by_type_usd"]
        .as_object()
        .expect("cost by type")
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    let cost = bucket["estimated_cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0 && (by_type - cost).abs() < 1e-9, "{bucket}");

    // Per route, over every model and over one: the stored rows with models merged, and the
    // series' rows of that model.
    for model in [None, Some("gpt-4o")] {
        let (status, body) = api
            .get(
                &format!(
                    "/v1/metrics?tenant_id={t}&granularity=1h&group_by=route&from={}{}",
                    base.to_rfc3339().replace('+', "%2B"),
                    model.map(|m| format!("&model={m}")).unwrap_or_default()
                ),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let chosen: Vec<Call> = calls
            .iter()
            .filter(|c| model.is_none_or(|m| c.model == m))
            .cloned()
            .collect();
        let want = expected(&chosen, |c| {
            (c.at.duration_trunc(TimeDelta::hours(1)).unwrap(), c.route)
        });
        let items = body["metrics"].as_array().unwrap();
        assert_eq!(items.len(), want.len(), "{body}");
        for item in items {
            assert_eq!(item["model"], Value::Null);
            let key = (time(&item["window_start"]), item["route"].as_str().unwrap());
            let w = want.iter().find(|(k, _)| *k == &key).map(|(_, v)| *v);
            assert_eq!(Some(figures(item)), w, "{item}");
        }
    }

    // A range starting off the hour: its first hour is read from minute rows, the rest from
    // the hourly roll-ups, and only the calls from its start on are counted.
    let from = base + TimeDelta::minutes(3);
    let (status, body) = api
        .get(
            &format!(
                "/v1/metrics?tenant_id={t}&granularity=1h&group_by=model&from={}",
                from.to_rfc3339().replace('+', "%2B")
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let later: Vec<Call> = calls.iter().filter(|c| c.at >= from).cloned().collect();
    let want = expected(&later, |c| c.model);
    let items = body["metrics"].as_array().unwrap();
    assert_eq!(items.len(), want.len(), "{body}");
    for item in items {
        assert_eq!(time(&item["window_start"]), base);
        assert_eq!(
            Some(figures(item)),
            want.get(item["model"].as_str().unwrap()).copied(),
            "{item}"
        );
    }

    // The summary: totals and the top models and routes.
    let (status, body) = api
        .get(
            &format!(
                "/v1/summary?tenant_id={t}&from={}",
                base.to_rfc3339().replace('+', "%2B")
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(figures(&body["totals"]), all[&()]);
    let per_model = expected(&calls, |c| c.model);
    let top = &body["top_models_by_requests"];
    let (first, first_count) = per_model
        .iter()
        .max_by_key(|(m, v)| (v.0, std::cmp::Reverse(**m)))
        .map(|(m, v)| (*m, v.0))
        .unwrap();
    assert_eq!(
        (
            top[0]["name"].as_str().unwrap(),
            top[0]["requests"].as_i64().unwrap()
        ),
        (first, first_count)
    );
    assert_eq!(
        body["top_routes_by_cost"].as_array().unwrap().len(),
        ROUTES.len()
    );

    // Calls of the model without a price stay visible: counted, their tokens too, never as
    // $0 of cost among the priced ones.
    let unpriced = calls.iter().filter(|c| c.model == "in-house-llm").count() as i64;
    assert!(unpriced > 0);
    assert_eq!(body["totals"]["unpriced"], unpriced, "{body}");
    assert_eq!(body["totals"]["unpriced_tokens"], 120 * unpriced);
    let named = &body["unpriced_models"][0];
    assert_eq!(
        (named["name"].as_str(), named["unpriced"].as_i64()),
        (Some("in-house-llm"), Some(unpriced))
    );
    assert_eq!(body["unpriced_models"].as_array().unwrap().len(), 1);

    // At today's prices: a service whose table prices gpt-4o at $1/$2 a million tokens
    // answers every shape at those prices, from the stored token sums; gpt-4o-mini keeps its
    // built-in price, so its figures are those recorded.
    let file = std::env::temp_dir().join(format!("{}.prices.json", unique("api-")));
    std::fs::write(
        &file,
        r#"{"models": {"gpt-4o": {"input": 1, "output": 2}}}"#,
    )
    .unwrap();
    let today = Api::start_with(
        &world.dsn,
        false,
        &[("PRICING_FILE", file.to_str().unwrap())],
    )
    .await;
    let at_today = |item: &Value| {
        let tokens = |name: &str| item[name].as_i64().unwrap() as f64;
        (tokens("prompt_tokens") * 1_000.0 + tokens("completion_tokens") * 2_000.0) / 1e9
    };
    let usd = |item: &Value| item["estimated_cost_usd"].as_f64().unwrap();
    let since = base.to_rfc3339().replace('+', "%2B");
    for shape in [
        format!("granularity=1h&group_by=model&from={since}"),
        format!("limit=1000&from={since}"),
    ] {
        let path = format!("/v1/metrics?tenant_id={t}&{shape}");
        let (_, recorded) = api.get(&path, None).await;
        let (status, current) = today.get(&format!("{path}&pricing=current"), None).await;
        assert_eq!(status, 200, "{current}");
        let (recorded, current) = (
            recorded["metrics"].as_array().unwrap(),
            current["metrics"].as_array().unwrap(),
        );
        assert_eq!(recorded.len(), current.len());
        for (was, now) in recorded.iter().zip(current) {
            assert_eq!(was["requests"], now["requests"]);
            if now["model"] == "gpt-4o" {
                assert!((usd(now) - at_today(now)).abs() < 1e-12, "{now}");
                assert!(usd(was) > usd(now), "the recorded price was higher: {was}");
            } else {
                assert_eq!(usd(was), usd(now), "{now}");
            }
        }
        // Asked of the same service without `pricing`, the recorded costs.
        let (_, default) = today.get(&path, None).await;
        assert_eq!(default["metrics"].as_array().unwrap(), recorded);
    }
    let (_, summary) = today
        .get(
            &format!("/v1/summary?tenant_id={t}&from={since}&pricing=current"),
            None,
        )
        .await;
    let (_, per_model) = today
        .get(
            &format!("/v1/metrics?tenant_id={t}&granularity=1d&group_by=model&from={since}&pricing=current"),
            None,
        )
        .await;
    let sum: f64 = per_model["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(usd)
        .sum();
    assert!((usd(&summary["totals"]) - sum).abs() < 1e-9, "{summary}");
    std::fs::remove_file(&file).ok();

    // Another tenant sees none of it.
    let (_, body) = api
        .get("/v1/metrics?tenant_id=someone-else-entirely", None)
        .await;
    assert_eq!(body["count"], 0);
}

#[tokio::test]
async fn every_bad_parameter_is_a_400_naming_it() {
    let world = World::new().await;
    let api = Api::start(&world.dsn, false).await;
    for (query, field) in [
        ("/v1/metrics", "tenant_id"),
        ("/v1/metrics?tenant_id=a&limit=0", "limit"),
        ("/v1/metrics?tenant_id=a&limit=1001", "limit"),
        ("/v1/metrics?tenant_id=a&limit=many", "limit"),
        ("/v1/metrics?tenant_id=a&from=yesterday", "from"),
        ("/v1/metrics?tenant_id=a&to=2024-13-01T00:00:00Z", "to"),
        (
            "/v1/metrics?tenant_id=a&from=2024-05-02T00:00:00Z&to=2024-05-01T00:00:00Z",
            "from",
        ),
        ("/v1/metrics?tenant_id=a&granularity=7m", "granularity"),
        ("/v1/metrics?tenant_id=a&group_by=colour", "group_by"),
        ("/v1/metrics?tenant_id=", "tenant_id"),
        ("/v1/summary", "tenant_id"),
        ("/v1/summary?tenant_id=a&top=0", "top"),
        ("/v1/summary?tenant_id=a&pricing=invoice", "pricing"),
        ("/v1/metrics?tenant_id=a&pricing=", "pricing"),
        ("/v1/metrics?tenant_id=a&model=gpt%00", "model"),
    ] {
        let (status, body) = api.get(query, None).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"], "invalid_parameters", "{query}");
        assert_eq!(error_fields(&body), [field], "{query}: {body}");
    }
    let (status, body) = api.get("/v1/nothing", None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn a_key_reads_only_its_own_tenant_and_a_revoked_key_reads_nothing() {
    let world = World::new().await;
    let api = Api::start(&world.dsn, true).await;
    let (own, own_key) = infra::keys::create(&world.pool, &world.tenant, "dashboard")
        .await
        .unwrap();
    let (_, other_key) = infra::keys::create(&world.pool, &unique("other-"), "")
        .await
        .unwrap();
    // A window of the key's tenant.
    sqlx::query("INSERT INTO llm_metrics (tenant_id, route, model, window_start, window_end, requests) VALUES ($1, '/r', 'm', $2, $3, 7)")
        .bind(&world.tenant)
        .bind(Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap())
        .bind(Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap() + TimeDelta::minutes(1))
        .execute(&world.pool)
        .await
        .unwrap();
    let t = &world.tenant;

    let (status, body) = api.get(&format!("/v1/metrics?tenant_id={t}"), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthenticated"))
    );
    let (status, _) = api
        .get(&format!("/v1/metrics?tenant_id={t}"), Some("slk_not-a-key"))
        .await;
    assert_eq!(status, 401);
    let (status, body) = api
        .get(&format!("/v1/metrics?tenant_id={t}"), Some(&other_key))
        .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let (status, body) = api
        .get(&format!("/v1/summary?tenant_id={t}"), Some(&other_key))
        .await;
    assert_eq!(status, 403, "{body}");
    let (_, body) = api.get("/v1/metrics", Some(&other_key)).await;
    assert_eq!(
        body["count"], 0,
        "a key without tenant_id reads its own tenant"
    );

    let (status, body) = api.get("/v1/metrics", Some(&own_key)).await;
    assert_eq!(
        (status, body["metrics"][0]["requests"].as_i64()),
        (200, Some(7)),
        "{body}"
    );
    let (status, body) = api
        .get(&format!("/v1/metrics?tenant_id={t}"), Some(&own_key))
        .await;
    assert_eq!((status, body["count"].as_i64()), (200, Some(1)));

    assert!(infra::keys::revoke(&world.pool, own.id).await.unwrap());
    let (status, _) = api.get("/v1/metrics", Some(&own_key)).await;
    assert_eq!(status, 401, "a revoked key is refused");
}

#[tokio::test]
async fn health_readiness_metrics_openapi_and_cors() {
    let world = World::new().await;
    let api = Api::start(&world.dsn, false).await;
    assert_eq!(api.get("/health", None).await.0, 200);
    let (status, body) = api.get("/ready", None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
    let (status, doc) = api.get("/openapi.json", None).await;
    assert_eq!(status, 200);
    let operations = test_support::operations(&doc);
    // What the README promises is in the document, and the document promises nothing more.
    assert_eq!(operations, test_support::readme_endpoints("Metrics API"));
    // Every operation of the document is routed: none answers with the fallback's 404 or 405.
    for operation in &operations {
        let (method, path) = operation.split_once(' ').expect("METHOD /path");
        let path = path.replace("{id}", "1");
        let status = api
            .client
            .request(
                method.parse().expect("a method"),
                format!("{}{path}", api.base),
            )
            .send()
            .await
            .expect("the API answers")
            .status()
            .as_u16();
        assert!(
            ![404, 405].contains(&status),
            "{operation} is documented but not routed: {status}"
        );
    }
    for schema in [
        "MetricsAnswer",
        "MetricsItem",
        "Summary",
        "Figures",
        "Ranked",
        "Error",
    ] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "{schema} missing"
        );
    }
    api.get("/v1/metrics?tenant_id=x", None).await;
    let text = api
        .client
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("streamlens_query_http_requests_total"),
        "{text}"
    );

    let preflight = api
        .client
        .request(reqwest::Method::OPTIONS, format!("{}/v1/metrics", api.base))
        .header("Origin", "https://dash.example")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://dash.example"
    );
    let foreign = api
        .client
        .get(format!("{}/health", api.base))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(foreign
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

/// A query slower than the request timeout is cancelled in Postgres before the answer, not
/// left running with nobody waiting. The query is made slow on purpose: the test holds a lock
/// on the windows table (of a database of its own, so that no other test waits behind it).
///
/// The statement timeout is set 500 ms short of the request timeout rather than left at its
/// default (a tenth, 150 ms, for this request timeout): it counts from when the statement
/// reaches Postgres, and on a machine busy with the other tests that once came more than
/// 150 ms after the request did (a connection to open or to wait for), so the 408 came first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_slower_than_its_request_is_cancelled_in_postgres_before_the_408() {
    let admin = infra::db::connect(&test_support::database_url(), 1)
        .await
        .expect("Postgres answers");
    let database = unique("slow_").replace('-', "_");
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&admin)
        .await
        .expect("a database of the test's own");
    let base = test_support::database_url();
    let dsn = format!(
        "{}/{database}",
        &base[..base.rfind('/').expect("a DSN with a path")]
    );
    let api = Api::start_with(
        &dsn,
        false,
        &[
            ("HTTP_REQUEST_TIMEOUT_MS", "1500"),
            ("QUERY_STATEMENT_TIMEOUT_MS", "1000"),
        ],
    )
    .await;

    let pool = infra::db::connect(&dsn, 1)
        .await
        .expect("the test's database");
    let mut lock = pool.begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE llm_metrics IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("the table locked");
    let started = std::time::Instant::now();
    let (status, body) = api.get("/v1/metrics?tenant_id=acme", None).await;
    let took = started.elapsed();
    assert_eq!(status, 408, "{body}");
    // Still locked: a statement left running would still be waiting, active, in the test's
    // database (where the lock's own transaction is idle).
    let running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active'",
    )
    .bind(&database)
    .fetch_one(&admin)
    .await
    .expect("pg_stat_activity");
    assert_eq!(running, 0, "the query still runs in Postgres after its 408");
    // Cancelled by the statement timeout, inside the request's time.
    assert_eq!(body["error"], "query_timeout", "{body}");
    assert!(took < std::time::Duration::from_millis(1500), "{took:?}");
    lock.rollback().await.expect("unlocked");

    // And with the table free again, the same query is answered.
    let (status, body) = api.get("/v1/metrics?tenant_id=acme", None).await;
    assert_eq!(status, 200, "{body}");
    pool.close().await;
    let _ = sqlx::query(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .execute(&admin)
        .await;
}
