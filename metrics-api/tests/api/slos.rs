//! Service level objectives: budgets and burn rates from windows the processor wrote, and
//! burn-rate alerts fired on the stream and delivered to a real receiver.

use std::time::Duration;

use chrono::{DurationRound, TimeDelta};
use serde_json::{json, Value};

use crate::alerts::{calls, post, wait_for, Setup};
use crate::helpers::*;

fn burn<'a>(status: &'a Value, window: &str) -> &'a Value {
    status["burn_rates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["window"] == window)
        .unwrap_or_else(|| panic!("no {window} burn rate: {status}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9 * b.abs().max(1.0)
}

/// An availability and a latency objective count the calls of the stored windows as a hand
/// count of the calls does (errors and timeouts bad; calls under the limit good), over 30 days
/// and over the windows their alerts watch; bad objectives are refused field by field; another
/// tenant cannot see them; deleted ones are gone; their alerts are not listed as rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_objective_counts_its_budget_from_the_stored_windows() {
    let mut world = World::new().await;
    let tenant = world.tenant.clone();
    let generated = crate::helpers::calls(&tenant);
    world.process(&generated).await;
    let api = Api::start(&world.dsn, true).await;
    let (_, key) = infra::keys::create(&world.pool, &tenant, "app")
        .await
        .unwrap();
    let slos = format!("{}/v1/slos", api.base);

    let (status, created) = post(
        &api.client,
        slos.clone(),
        &key,
        json!({"name": "calls succeed", "indicator": "availability", "target": 0.99}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert!(created["webhook_secret"].is_string(), "the tenant's first");
    let available = created["slo"]["id"].as_i64().unwrap();
    let (status, created) = post(
        &api.client,
        slos.clone(),
        &key,
        json!({"name": "chat is fast", "indicator": "latency", "target": 0.95,
               "threshold_ms": 1000, "route": "/chat"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let fast = created["slo"]["id"].as_i64().unwrap();

    // By hand: availability over every call, latency over the /chat calls.
    let total = generated.len() as u64;
    let bad = generated.iter().filter(|c| c.error).count() as u64;
    let chat: Vec<&Call> = generated.iter().filter(|c| c.route == "/chat").collect();
    let slow = chat.iter().filter(|c| c.latency_ms >= 1000).count() as u64;
    assert!(bad > 0 && slow > 0 && slow < chat.len() as u64);

    let (status, got) = api.get(&format!("/v1/slos/{available}"), Some(&key)).await;
    assert_eq!(status, 200, "{got}");
    let month = burn(&got, "30d");
    assert_eq!(
        (month["good"].as_u64(), month["total"].as_u64()),
        (Some(total - bad), Some(total)),
        "{got}"
    );
    let rate = bad as f64 / total as f64 / (1.0 - 0.99);
    assert!(close(month["burn_rate"].as_f64().unwrap(), rate), "{got}");
    assert!(
        close(got["budget_left"].as_f64().unwrap(), 1.0 - rate),
        "{got}"
    );
    assert_eq!(got["period"], json!({"good": total - bad, "total": total}));
    // The calls are three to four hours old: in the 6-hour window, not in the last hour.
    assert_eq!(burn(&got, "6h")["total"].as_u64(), Some(total));
    assert_eq!(
        (
            burn(&got, "1h")["total"].as_u64(),
            burn(&got, "1h")["burn_rate"].as_f64()
        ),
        (Some(0), Some(0.0))
    );
    let severities: Vec<&str> = got["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["severity"].as_str().unwrap())
        .collect();
    assert_eq!(severities, ["page", "ticket"], "{got}");

    let (status, got) = api.get(&format!("/v1/slos/{fast}"), Some(&key)).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        got["period"],
        json!({"good": chat.len() as u64 - slow, "total": chat.len()}),
        "{got}"
    );

    let (status, listed) = api.get("/v1/slos", Some(&key)).await;
    assert_eq!(status, 200, "{listed}");
    let names: Vec<&str> = listed["slos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["slo"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["calls succeed", "chat is fast"]);
    let (_, rules) = api.get("/v1/alerts/rules", Some(&key)).await;
    assert_eq!(
        rules["rules"],
        json!([]),
        "an objective's alerts are not rules"
    );

    // Every bad field named.
    let (status, refused) = post(
        &api.client,
        slos.clone(),
        &key,
        json!({"name": "x", "indicator": "latency", "target": 99.5, "min_requests": 0}),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(
        error_fields(&refused),
        ["target", "threshold_ms", "min_requests"]
    );
    let (status, refused) = post(&api.client, slos.clone(), &key, json!({"name": "x"})).await;
    assert_eq!(
        (status, error_fields(&refused)),
        (400, vec!["indicator".to_owned()])
    );
    let (status, refused) = api.get("/v1/slos/first", Some(&key)).await;
    assert_eq!(
        (status, error_fields(&refused)),
        (400, vec!["id".to_owned()])
    );

    // Another tenant's key sees none of it.
    let (_, other) = infra::keys::create(&world.pool, &unique("other"), "app")
        .await
        .unwrap();
    let (status, _) = api
        .get(&format!("/v1/slos/{available}"), Some(&other))
        .await;
    assert_eq!(status, 404);
    let (_, none) = api.get("/v1/slos", Some(&other)).await;
    assert_eq!(none["slos"], json!([]));

    let deleted = api
        .client
        .delete(format!("{slos}/{available}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let (status, _) = api.get(&format!("/v1/slos/{available}"), Some(&key)).await;
    assert_eq!(status, 404);
    let evaluated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alert_rules WHERE slo_id = $1 AND deleted_at IS NULL",
    )
    .bind(available)
    .fetch_one(&world.pool)
    .await
    .unwrap();
    assert_eq!(evaluated, 0, "its alerts are no longer evaluated");
}

/// A burst of failures burns the budget fast: the processor fires the objective's page and
/// ticket alerts (both windows of each burning) to the webhook, signed; healthy calls the
/// next minute bring the last 5 minutes under the page's rate, which resolves the page, while
/// the last 30 minutes still burn at the ticket's rate, which keeps the ticket firing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_burn_pages_and_its_end_resolves_the_page_not_the_ticket() {
    let Setup {
        mut world,
        tenant,
        key,
        hooks,
        hook_base,
    } = Setup::new().await;
    let allowed = [("ALERT_WEBHOOK_ALLOWED", "http://127.0.0.1")];
    let api = Api::start_with(&world.dsn, true, &allowed).await;
    let ingest = world.start_ingestion().await;
    let (status, created) = post(
        &api.client,
        format!("{}/v1/slos", api.base),
        &key,
        json!({"name": "calls succeed", "indicator": "availability", "target": 0.99,
               "min_requests": 5, "webhook_url": format!("{hook_base}/slo")}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["webhook_secret"].as_str().unwrap().to_owned();
    let id = created["slo"]["id"].as_i64().unwrap();
    world.processor_env = vec![("ALERT_WEBHOOK_ALLOWED", "http://127.0.0.1".into())];
    world.start_processor();

    let client = reqwest::Client::new();
    let ingestion = (ingest.as_str(), key.as_str(), tenant.as_str());
    let spiked = calls(&client, ingestion, "burst", 8, true).await;
    let minute_end = spiked.duration_trunc(TimeDelta::minutes(1)).unwrap() + TimeDelta::minutes(1);
    let got = wait_for(&hooks, 2, Duration::from_secs(100)).await;
    eprintln!(
        "burn-rate webhooks {} ms after the burst's minute ended",
        (got[1].at - minute_end).num_milliseconds()
    );
    let mut fired: Vec<(String, String)> = Vec::new();
    for hook in &got {
        assert_eq!(hook.path, "slo");
        assert_eq!(
            hook.signature,
            infra::alerts::signature(&secret, &hook.body)
        );
        let event: Value = serde_json::from_slice(&hook.body).unwrap();
        assert_eq!(event["slo_id"].as_i64(), Some(id), "{event}");
        assert_eq!(event["metric"], "burn_rate");
        // Every call failed: the budget (1%) burns a hundred times too fast.
        assert!(
            (event["value"].as_f64().unwrap() - 100.0).abs() < 1e-6,
            "{event}"
        );
        fired.push((
            event["severity"].as_str().unwrap().to_owned(),
            event["state"].as_str().unwrap().to_owned(),
        ));
    }
    fired.sort();
    assert_eq!(
        fired,
        [
            ("page".to_owned(), "firing".to_owned()),
            ("ticket".to_owned(), "firing".to_owned())
        ]
    );
    let (_, status) = api.get(&format!("/v1/slos/{id}"), Some(&key)).await;
    let states: Vec<&str> = status["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["firing", "firing"], "{status}");
    assert!(burn(&status, "5m")["burn_rate"].as_f64().unwrap() > 99.0);

    // 8 bad calls in 108: 7.4× — under the page's 14.4× (less the margin), over the ticket's 6×.
    calls(&client, ingestion, "healthy", 100, false).await;
    let got = wait_for(&hooks, 3, Duration::from_secs(100)).await;
    let resolved: Value = serde_json::from_slice(&got[2].body).unwrap();
    assert_eq!(
        (resolved["severity"].as_str(), resolved["state"].as_str()),
        (Some("page"), Some("resolved")),
        "{resolved}"
    );
    let expected = 8.0 / 108.0 / (1.0 - 0.99);
    assert!((resolved["value"].as_f64().unwrap() - expected).abs() < 1e-6);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(hooks.lock().unwrap().len(), 3, "the ticket keeps firing");
    let (_, firing) = api.get("/v1/alerts?state=firing", Some(&key)).await;
    assert_eq!(firing["count"], 2, "{firing}");
}
