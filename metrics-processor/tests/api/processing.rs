//! What the processor promises, each proved against the real broker and Postgres.

use std::time::Duration;

use chrono::TimeDelta;
use serde_json::Value;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(45);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_before_their_requests_and_duplicates_are_counted_once() {
    let world = World::new().await;
    let at = minute(3, 10);
    let mut events = Vec::new();
    for i in 0..20 {
        let id = format!("{}-{i}", world.tenant);
        // Every response is produced before its request; every event twice.
        events.push(world.response(&id, at + TimeDelta::seconds(1), 100 + i, i % 5 == 0));
        events.push(world.response(&id, at + TimeDelta::seconds(1), 100 + i, i % 5 == 0));
    }
    world.produce(&events).await;
    let requests: Vec<Value> = (0..20)
        .flat_map(|i| {
            let r = world.request(&format!("{}-{i}", world.tenant), at, "gpt-4o");
            [r.clone(), r]
        })
        .collect();
    world.produce(&requests).await;
    let processor = Processor::start(&world);
    world
        .wait_for("20 paired requests", WAIT, |w| {
            w.values().map(|v| v.0).sum::<i64>() >= 20
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let windows = world.windows().await;
    assert_eq!(windows.len(), 1, "{windows:?}");
    let (requests, errors, timeouts, completed) = *windows.values().next().unwrap();
    assert_eq!((requests, errors, timeouts, completed), (20, 4, 0, 20));
    processor.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_response_is_a_timeout_and_an_orphan_goes_to_the_dead_letter_topic() {
    let world = World::new().await;
    let at = minute(5, 0);
    let lonely_request = format!("{}-req", world.tenant);
    let lonely_response = format!("{}-resp", world.tenant);
    world
        .produce(&[
            world.request(&lonely_request, at, "gpt-4o"),
            world.response(&lonely_response, at, 300, false),
        ])
        .await;
    let processor = Processor::start(&world);
    world
        .wait_for("the timeout", WAIT, |w| w.values().any(|v| v.2 == 1))
        .await;
    let windows = world.windows().await;
    assert_eq!(
        windows
            .values()
            .map(|v| (v.0, v.2, v.3))
            .collect::<Vec<_>>(),
        [(1, 1, 0)]
    );
    processor.stop();
    let letters = world.read("dlq");
    let orphan = letters
        .iter()
        .find(|(key, _, _)| key == &lonely_response)
        .expect("the orphan was dead-lettered");
    assert_eq!(orphan.2.get("dlq.kind").map(String::as_str), Some("orphan"));
    assert_eq!(orphan.2.get("dlq.topic"), Some(&world.topic("responses")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_goes_to_the_dead_letter_topic_and_processing_goes_on() {
    let world = World::new().await;
    world
        .produce_raw(&world.topic("requests"), "poison", b"{not json")
        .await;
    world
        .produce_raw(
            &world.topic("responses"),
            "poison-2",
            br#"{"request_id": "x", "latency_ms": -4}"#,
        )
        .await;
    let at = minute(3, 0);
    let id = format!("{}-ok", world.tenant);
    world
        .produce(&[
            world.request(&id, at, "gpt-4o"),
            world.response(&id, at, 250, false),
        ])
        .await;
    let processor = Processor::start(&world);
    world
        .wait_for("the valid pair", WAIT, |w| {
            w.values().map(|v| v.0).sum::<i64>() == 1
        })
        .await;
    processor.stop();
    let letters = world.read("dlq");
    let poison = letters
        .iter()
        .find(|(key, _, _)| key == "poison")
        .expect("dead-lettered");
    assert_eq!(poison.1, b"{not json", "the original bytes are kept");
    assert_eq!(
        poison.2.get("dlq.kind").map(String::as_str),
        Some("invalid")
    );
    assert_eq!(
        poison.2.get("x-request-id").map(String::as_str),
        Some("poison"),
        "the HTTP request id travels on with the dead letter"
    );
    let second = letters
        .iter()
        .find(|(key, _, _)| key == "poison-2")
        .expect("dead-lettered");
    assert!(
        second.2["dlq.reason"].contains("latency_ms"),
        "{:?}",
        second.2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_pair_is_merged_into_the_written_window_not_written_over_it() {
    let world = World::new().await;
    let at = minute(4, 5);
    let pair = |i: usize| {
        let id = format!("{}-{i}", world.tenant);
        [
            world.request(&id, at, "gpt-4o-mini"),
            world.response(&id, at, 400, false),
        ]
    };
    world.produce(&[pair(0), pair(1), pair(2)].concat()).await;
    let processor = Processor::start(&world);
    world
        .wait_for("the first three", WAIT, |w| {
            w.values().map(|v| v.0).sum::<i64>() == 3
        })
        .await;
    world.produce(&pair(3)).await;
    world
        .wait_for("the late fourth", WAIT, |w| {
            w.values().map(|v| v.0).sum::<i64>() == 4
        })
        .await;
    assert_eq!(world.windows().await.len(), 1, "the same window, merged");
    processor.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_written_window_reaches_llm_metrics_with_its_full_row() {
    let world = World::new().await;
    let at = minute(3, 0);
    let mut events = Vec::new();
    for i in 0..5 {
        let id = format!("{}-{i}", world.tenant);
        // With the optional details a provider reports: four name their provider, one fails
        // with a type, every one wrote to the cache and reasoned.
        let mut request = world.request(&id, at, "gpt-4o");
        if i < 4 {
            request["provider"] = "openai".into();
        }
        let mut response = world.response(&id, at, 100 * (i + 1), false);
        response["cache_creation_tokens"] = 10.into();
        response["reasoning_tokens"] = 5.into();
        if i == 0 {
            response["error_type"] = "rate_limit".into();
        }
        events.extend([request, response]);
    }
    world.produce(&events).await;
    let processor = Processor::start(&world);
    world
        .wait_for("five requests", WAIT, |w| {
            w.values().map(|v| v.0).sum::<i64>() == 5
        })
        .await;
    // Published after its commit: waited for, not assumed within a fixed pause (a loaded
    // machine takes longer).
    let key = format!("{}|/chat|gpt-4o", world.tenant);
    let deadline = std::time::Instant::now() + WAIT;
    let latest: Value = loop {
        let whole = world
            .read("metrics")
            .iter()
            .filter(|(k, _, _)| k == &key)
            .map(|(_, v, _)| serde_json::from_slice::<Value>(v).unwrap())
            .rfind(|v| v["requests"] == 5);
        if let Some(record) = whole {
            break record;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no record of the whole window on llm.metrics"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    processor.stop();
    assert_eq!(latest["requests"], 5);
    assert_eq!(latest["avg_latency_ms"], 300.0);
    assert_eq!(
        latest["estimated_cost_usd"],
        5.0 * (100.0 * 2.5 + 20.0 * 10.0) / 1e6
    );
    assert_eq!(latest["window_start"], serde_json::json!(at));
    assert_eq!(latest["errors"], 1);
    assert_eq!(latest["error_types"], serde_json::json!({"rate_limit": 1}));
    assert_eq!(latest["providers"], serde_json::json!({"openai": 4}));
    assert_eq!(latest["cache_creation_tokens"], 50);
    assert_eq!(latest["reasoning_tokens"], 25);
    // The cost by token type adds up to the whole.
    let parts = latest["cost_by_type_nanos"]
        .as_object()
        .expect("cost by type");
    let sum: i64 = parts.values().map(|v| v.as_i64().unwrap()).sum();
    assert_eq!(Some(sum), latest["cost_nanos"].as_i64(), "{parts:?}");
    assert!(parts["input"].as_i64() > Some(0) && parts["reasoning"].as_i64() > Some(0));
}

/// Crashes (kill -9) at different points, each followed by a restart, lose nothing and count
/// nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_and_restart_give_exact_totals() {
    let world = World::new().await;
    let mut expected_timeouts = 0;
    let mut total = 0;
    for (round, pause_ms) in [150u64, 600, 50, 900].into_iter().enumerate() {
        // New traffic each round, so every crash lands in the middle of work.
        let mut events = Vec::new();
        for i in 0..1500i64 {
            let n = round as i64 * 1500 + i;
            let id = format!("{}-{n}", world.tenant);
            let at = minute(6, 0) + TimeDelta::milliseconds(n * 50);
            events.push(world.request(&id, at, if n % 2 == 0 { "gpt-4o" } else { "gpt-4o-mini" }));
            if n % 50 == 7 {
                expected_timeouts += 1;
            } else {
                events.push(world.response(
                    &id,
                    at + TimeDelta::seconds(2),
                    50 + (n as u64 % 900),
                    n % 13 == 0,
                ));
            }
            if n % 97 == 0 {
                events.push(world.request(&id, at, "gpt-4o")); // a duplicate delivery
            }
        }
        total += 1500;
        world.produce(&events).await;
        let before = world.committed_position().await;
        let processor = Processor::start(&world);
        world
            .wait_for_commit_beyond(before, Duration::from_secs(60))
            .await;
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        processor.kill().await;
    }
    let processor = Processor::start(&world);
    world
        .wait_for("every request", Duration::from_secs(90), |w| {
            w.values().map(|v| v.0).sum::<i64>() >= total
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let windows = world.windows().await;
    let requests: i64 = windows.values().map(|v| v.0).sum();
    let timeouts: i64 = windows.values().map(|v| v.2).sum();
    let completed: i64 = windows.values().map(|v| v.3).sum();
    assert_eq!(
        (requests, timeouts, completed),
        (total, expected_timeouts, total - expected_timeouts)
    );
    processor.stop();
}

/// Two instances in one group, one leaving mid-run: the same totals as one instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_one_leaving_give_exact_totals() {
    let world = World::new().await;
    let mut events = Vec::new();
    for i in 0..2000i64 {
        let id = format!("{}-{i}", world.tenant);
        let at = minute(5, 0) + TimeDelta::milliseconds(i * 120);
        events.extend([
            world.request(&id, at, "gpt-4o"),
            world.response(&id, at, 80, false),
        ]);
    }
    let (first, second) = events.split_at(events.len() / 2);
    world.produce(first).await;
    let a = Processor::start(&world);
    let b = Processor::start(&world);
    tokio::time::sleep(Duration::from_secs(3)).await;
    world.produce(second).await;
    a.stop();
    world
        .wait_for("all 2000 requests", Duration::from_secs(90), |w| {
            w.values().map(|v| v.0).sum::<i64>() >= 2000
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(world.total_requests().await, 2000);
    b.stop();
}

/// Postgres gone for a while in the middle of work: the processor stops reading, retries, and
/// carries on when it is back, with nothing lost and nothing counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_restarted_gives_exact_totals() {
    let postgres = OwnPostgres::start();
    let world = World::with_database(postgres.dsn()).await;
    let batch = |from: i64| {
        let mut events = Vec::new();
        for n in from..from + 1500 {
            let id = format!("{}-{n}", world.tenant);
            let at = minute(5, 0) + TimeDelta::milliseconds(n * 80);
            events.extend([
                world.request(&id, at, "gpt-4o"),
                world.response(&id, at, 120, false),
            ]);
        }
        events
    };
    world.produce(&batch(0)).await;
    let processor = Processor::start(&world);
    world
        .wait_for_commit_beyond(0, Duration::from_secs(60))
        .await;
    postgres.halt();
    world.produce(&batch(1500)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    postgres.resume();
    world
        .wait_for("all 3000 requests", Duration::from_secs(90), |w| {
            w.values().map(|v| v.0).sum::<i64>() >= 3000
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let windows = world.windows().await;
    let requests: i64 = windows.values().map(|v| v.0).sum();
    let completed: i64 = windows.values().map(|v| v.3).sum();
    assert_eq!((requests, completed), (3000, 3000));
    processor.stop();
}
