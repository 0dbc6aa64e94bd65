//! The Postgres store alone: what only a real database can show (a retry racing the commit
//! it repeats, publishing under concurrent changes). The behaviour both stores share is in
//! `contract.rs`.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use infra::db::StoredAggregate;
use infra::rollups::{self, BucketKey};
use metrics_core::aggregate::Aggregate;
use metrics_core::alerts::State;
use metrics_core::events::Event;
use metrics_core::pricing::PricingTable;
use metrics_core::tiles::Level;
use metrics_processor::domain::engine::{Engine, EngineConfig, Flush};
use metrics_processor::domain::offsets::{Input, Source};
use metrics_processor::output::MetricRow;
use metrics_processor::store::Store;
use sqlx::Row;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Handle;

use crate::calls::{request, response, source};
use crate::helpers::{unique, OwnPostgres, World};

/// A store of a group and topics of its own that has taken partition 0 of both inputs, as an
/// assignment does, with the group's name and the epochs a commit must match.
async fn claimed_store(world: &World) -> (Store, String, HashMap<(Input, i32), i64>) {
    let group = unique("store-");
    let store = Store::new(
        world.pool.clone(),
        &group,
        &unique("req-"),
        &unique("resp-"),
    );
    let claimed = store.claim(&[0]).await.expect("claim");
    let epochs = claimed
        .claims
        .iter()
        .map(|c| ((c.input, c.partition), c.epoch))
        .collect();
    (store, group, epochs)
}

/// A flush holding one closed window with one completed call of `tenant`.
fn one_call(tenant: &str) -> Flush {
    let now = Utc::now();
    let at = now - TimeDelta::minutes(10);
    let mut engine = Engine::new(EngineConfig::default(), PricingTable::default());
    engine.assign(
        0,
        [(Input::Requests, None), (Input::Responses, None)],
        Vec::new(),
        now,
    );
    engine.apply(source(Input::Requests, 0), request(tenant, "r1", at), now);
    engine.apply(source(Input::Responses, 0), response(tenant, "r1", at), now);
    engine.reached_end(Input::Requests, 0);
    engine.reached_end(Input::Responses, 0);
    let (flush, _) = engine.flush(now + TimeDelta::hours(1));
    assert_eq!(flush.windows().len(), 1);
    flush
}

/// The connection dropped after COMMIT was sent: the first transaction may still be
/// committing when the retry starts. The retry must wait for it and then find it written,
/// not read the positions from before it and write the windows a second time.
#[tokio::test]
async fn a_retry_racing_the_commit_it_repeats_adds_nothing() {
    let world = World::new().await;
    let (store, group, epochs) = claimed_store(&world).await;
    let flush = one_call(&world.tenant);
    let (key, _) = flush.windows().remove(0);
    // The first attempt, still in flight: it holds its positions and wrote its window.
    let mut first = world.pool.begin().await.expect("begin");
    sqlx::query(
        "UPDATE processor_positions SET last_flush = 'flush-1', position = 1
         WHERE consumer_group = $1",
    )
    .bind(&group)
    .execute(&mut *first)
    .await
    .expect("positions");
    sqlx::query(
        "INSERT INTO llm_metrics (tenant_id, route, model, window_start, window_end, requests, completed)
         VALUES ($1, $2, $3, $4, $5, 1, 1)",
    )
    .bind(&*key.tenant)
    .bind(&*key.route)
    .bind(&*key.model)
    .bind(key.start)
    .bind(key.end())
    .execute(&mut *first)
    .await
    .expect("window");
    let retry = {
        let (store, flush) = (store.clone(), flush.clone());
        tokio::spawn(async move { store.commit(&flush, &epochs, "flush-1").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !retry.is_finished(),
        "the retry waits for the first attempt"
    );
    first.commit().await.expect("the first attempt commits");
    retry.await.expect("task").expect("the retry succeeds");
    assert_eq!(
        world.total_requests().await,
        1,
        "the retry found its flush written"
    );
}

/// A handover: one instance publishes a row while another changes it and publishes too. The
/// records must reach `llm.metrics` in revision order, so that a consumer keeping the last
/// record per key ends with the newest content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_changed_while_it_is_published_goes_out_after_it_newest_last() {
    // A server of its own: publishing takes every unpublished row of the database.
    let postgres = OwnPostgres::start();
    let world = World::with_database(postgres.dsn()).await;
    let (store, _, epochs) = claimed_store(&world).await;
    let flush = one_call(&world.tenant);
    store
        .commit(&flush, &epochs, "flush-1")
        .await
        .expect("commit");
    let sent = Arc::new(Mutex::new(Vec::new()));
    let record = |sent: &Arc<Mutex<Vec<i64>>>| {
        let sent = Arc::clone(sent);
        move |rows: &[MetricRow]| {
            sent.lock().unwrap().extend(rows.iter().map(|r| r.revision));
            Ok::<(), String>(())
        }
    };
    // The first instance publishes revision 1, slowly: its records reach the topic only
    // when the broker acknowledges them, 800 ms later.
    let slow = {
        let (store, sent, handle) = (store.clone(), Arc::clone(&sent), Handle::current());
        tokio::task::spawn_blocking(move || {
            handle.block_on(store.publish(1000, |rows: &[MetricRow]| {
                std::thread::sleep(Duration::from_millis(800));
                sent.lock().unwrap().extend(rows.iter().map(|r| r.revision));
                Ok(())
            }))
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Meanwhile the other instance merges into the same row and publishes what it finds.
    let change = {
        let (store, flush, epochs) = (store.clone(), flush.clone(), epochs.clone());
        tokio::spawn(async move { store.commit(&flush, &epochs, "flush-2").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.publish(1000, record(&sent)).await.expect("publish");
    slow.await.expect("task").expect("slow publish");
    change.await.expect("task").expect("commit");
    store.publish(1000, record(&sent)).await.expect("publish");
    assert_eq!(
        *sent.lock().unwrap(),
        vec![1, 2],
        "revisions in order, newest last"
    );
    assert_eq!(world.total_requests().await, 2);
}

/// The publisher polls once a commit with a generic plan (`LIMIT $1`), whose estimate can pass
/// `jit_above_cost` on a large table however few rows it reads; compiled, each poll cost
/// Postgres 160 to 250 ms instead of 0.4. Here JIT would compile any plan at all.
#[tokio::test]
async fn statements_are_never_jit_compiled() {
    let world = World::new().await;
    let mut conn = world.pool.acquire().await.expect("connection");
    let jit: String = sqlx::query_scalar("SHOW jit")
        .fetch_one(&mut *conn)
        .await
        .expect("show");
    assert_eq!(jit, "off");
    sqlx::query("SET jit_above_cost = 0")
        .execute(&mut *conn)
        .await
        .expect("set");
    let plan: serde_json::Value = sqlx::query_scalar(
        "EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM llm_metrics
         WHERE published_at IS DISTINCT FROM updated_at ORDER BY updated_at LIMIT 1000",
    )
    .fetch_one(&mut *conn)
    .await
    .expect("explain");
    assert!(plan[0].get("Planning Time").is_some(), "a plan: {plan}");
    assert!(plan[0].get("JIT").is_none(), "compiled: {plan}");
}

/// A call of a property test: minutes before the test's base time, its series and figures.
#[derive(Debug, Clone)]
struct Call {
    minutes_ago: i64,
    second: i64,
    route: usize,
    model: usize,
    latency_ms: u64,
    completion_tokens: u64,
    error: Option<usize>,
    provider: usize,
}

fn calls() -> impl proptest::strategy::Strategy<Value = Vec<Call>> {
    use proptest::prelude::*;
    let call = (
        0i64..3 * 1440,
        0i64..60,
        0usize..3,
        0usize..2,
        1u64..5_000,
        0u64..500,
    )
        .prop_flat_map(
            |(minutes_ago, second, route, model, latency_ms, completion_tokens)| {
                (proptest::option::of(0usize..3), 0usize..3).prop_map(move |(error, provider)| {
                    Call {
                        minutes_ago,
                        second,
                        route,
                        model,
                        latency_ms,
                        completion_tokens,
                        error,
                        provider,
                    }
                })
            },
        );
    proptest::collection::vec(call, 1..40)
}

/// One flush holding `calls` (each paired with its response), as an engine that read them
/// late would write it: into windows closed long ago, merged with what is stored.
fn flush_of(tenant: &str, batch: usize, calls: &[Call], now: chrono::DateTime<Utc>) -> Flush {
    use metrics_core::events::Event;
    let mut engine = Engine::new(EngineConfig::default(), PricingTable::default());
    engine.assign(
        0,
        [(Input::Requests, None), (Input::Responses, None)],
        Vec::new(),
        now,
    );
    for (i, call) in calls.iter().enumerate() {
        let at = Level::Minute.bucket(now) - TimeDelta::minutes(call.minutes_ago + 10)
            + TimeDelta::seconds(call.second);
        let id = format!("b{batch}-c{i}");
        let mut asked = request(tenant, &id, at);
        if let Event::Request(r) = &mut asked {
            r.route = ["/chat", "/search", "/summarize"][call.route]
                .parse()
                .unwrap();
            r.model = ["gpt-4o", "claude-sonnet-4"][call.model].parse().unwrap();
            r.provider = Some(
                ["openai", "anthropic", "azure"][call.provider]
                    .parse()
                    .unwrap(),
            );
        }
        let mut answered = response(tenant, &id, at);
        if let Event::Response(r) = &mut answered {
            r.latency_ms = call.latency_ms;
            r.completion_tokens = call.completion_tokens;
            if let Some(kind) = call.error {
                r.error = Some("failed".into());
                r.error_type = Some(["rate_limit", "timeout", "server"][kind].parse().unwrap());
            }
        }
        engine.apply(source(Input::Requests, i as i64), asked, now);
        engine.apply(source(Input::Responses, i as i64), answered, now);
    }
    engine.reached_end(Input::Requests, 0);
    engine.reached_end(Input::Responses, 0);
    engine.flush(now + TimeDelta::hours(1)).0
}

/// The tenant's roll-up rows as stored, and as computed from scratch from its
/// minute rows.
async fn rollups_stored_and_from_minutes(
    pool: &sqlx::PgPool,
    tenant: &str,
) -> (
    BTreeMap<BucketKey, Aggregate>,
    BTreeMap<BucketKey, Aggregate>,
) {
    let stored = sqlx::query(&format!(
        "SELECT tenant_id, bucket_seconds, bucket_start, route, model, {}
         FROM llm_metrics_rollups WHERE tenant_id = $1",
        Aggregate::COLUMNS
    ))
    .bind(tenant)
    .fetch_all(pool)
    .await
    .expect("roll-ups");
    let stored = stored
        .iter()
        .map(|row| {
            let key = BucketKey {
                tenant: row.get::<String, _>("tenant_id").into(),
                seconds: row.get("bucket_seconds"),
                start: row.get("bucket_start"),
                route: row.get::<String, _>("route").into(),
                model: row.get::<String, _>("model").into(),
            };
            (key, Aggregate::from_row(row).expect("row"))
        })
        .collect();
    let minutes = sqlx::query(&format!(
        "SELECT route, model, window_start, {} FROM llm_metrics WHERE tenant_id = $1",
        Aggregate::COLUMNS
    ))
    .bind(tenant)
    .fetch_all(pool)
    .await
    .expect("minutes");
    // From scratch: each minute row merged into its hour and its day.
    let mut from_minutes: BTreeMap<BucketKey, Aggregate> = BTreeMap::new();
    for row in &minutes {
        let (route, model): (String, String) = (row.get("route"), row.get("model"));
        // Per series, per model (routes merged), per route (models merged), per tenant.
        let groupings = [
            (route.as_str(), model.as_str()),
            ("", model.as_str()),
            (route.as_str(), ""),
            ("", ""),
        ];
        for level in [Level::FiveMinutes, Level::Hour, Level::Day] {
            for (route, model) in groupings {
                let key = BucketKey {
                    tenant: tenant.into(),
                    seconds: level.seconds(),
                    start: level.bucket(row.get("window_start")),
                    route: route.into(),
                    model: model.into(),
                };
                from_minutes
                    .entry(key)
                    .or_default()
                    .merge_row(row)
                    .expect("row");
            }
        }
    }
    (stored, from_minutes)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(8))]

    /// Flushes of calls over three days, each merged late into windows written before (as
    /// after restarts and stragglers), committed in turn: every roll-up row equals
    /// the merge of the minute rows it covers, sums, histograms and breakdowns alike; and a
    /// rebuild from the minute rows changes none of them.
    #[test]
    fn roll_ups_equal_the_minute_rows_they_cover_after_random_late_merges(
        flushes in proptest::collection::vec(calls(), 1..6)
    ) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let world = World::new().await;
            let (store, _, epochs) = claimed_store(&world).await;
            let now = Utc::now();
            for (i, calls) in flushes.iter().enumerate() {
                let flush = flush_of(&world.tenant, i, calls, now);
                store.commit(&flush, &epochs, &format!("flush-{i}")).await.expect("commit");
            }
            let (stored, from_minutes) = rollups_stored_and_from_minutes(&world.pool, &world.tenant).await;
            let calls: usize = flushes.iter().map(Vec::len).sum();
            // The tenant's daily rows (routes and models merged), and the series' rows of each day.
            let days = |tenant_rows: bool| -> u64 {
                stored
                    .iter()
                    .filter(|(k, _)| k.seconds == 86_400)
                    .filter(|(k, _)| (k.route.is_empty() && k.model.is_empty()) == tenant_rows)
                    .filter(|(k, _)| tenant_rows || (!k.route.is_empty() && !k.model.is_empty()))
                    .map(|(_, a)| a.requests)
                    .sum()
            };
            assert_eq!(days(true), calls as u64, "the tenant's daily rows hold every call once");
            assert_eq!(days(false), calls as u64, "the series' daily rows hold every call once");
            assert_eq!(stored, from_minutes, "roll-ups as kept by the commits");
            let (from, to) = (now - TimeDelta::days(4), now + TimeDelta::days(1));
            let mut conn = world.pool.acquire().await.expect("connection");
            rollups::rebuild(&mut conn, from, to).await.expect("rebuild");
            let (rebuilt, _) = rollups_stored_and_from_minutes(&world.pool, &world.tenant).await;
            assert_eq!(rebuilt, stored, "a rebuild from the minute rows changes nothing");
        });
    }
}

/// Daily partitions: windows of days without a partition wait in the default partition and
/// move into their day's partition when it is created; retention then drops whole days of
/// windows and their roll-up rows together, and what stays of the roll-ups still
/// equals the minute rows that stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_whole_days_of_windows_and_their_roll_ups_together() {
    // A server of its own: partitions and retention are the whole database's.
    let postgres = OwnPostgres::start();
    let world = World::with_database(postgres.dsn()).await;
    let (store, _, epochs) = claimed_store(&world).await;
    let now = Utc::now();
    let calls: Vec<Call> = (0..45)
        .map(|i| Call {
            minutes_ago: i * 95,
            second: 5,
            route: i as usize % 3,
            model: i as usize % 2,
            latency_ms: 100 + i as u64,
            completion_tokens: 10,
            error: None,
            provider: 0,
        })
        .collect();
    let flush = flush_of(&world.tenant, 0, &calls, now);
    store
        .commit(&flush, &epochs, "flush-0")
        .await
        .expect("commit");
    let in_default = |table: &'static str| {
        let pool = world.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&pool)
                .await
                .expect("count")
        }
    };
    // A fresh database has partitions from today on: the older windows wait in the default.
    assert!(in_default("llm_metrics_default").await > 0);
    let made = store
        .maintain_partitions(now, TimeDelta::days(7))
        .await
        .expect("partitions");
    assert!(made.created >= 2 * 7 && made.dropped == 0, "{made:?}");
    assert_eq!(
        in_default("llm_metrics_default").await,
        0,
        "moved into their days"
    );
    assert_eq!(in_default("llm_metrics_rollups_default").await, 0);
    assert_eq!(world.total_requests().await, 45, "nothing lost moving them");

    let retention = TimeDelta::hours(36);
    let done = store
        .maintain_partitions(now, retention)
        .await
        .expect("retention");
    let kept = world.total_requests().await;
    assert!(
        done.dropped > 0 && kept > 0 && kept < 45,
        "{done:?}, {kept} kept"
    );
    let cutoff = Level::Day.bucket(now - retention);
    let oldest: (Option<chrono::DateTime<Utc>>, Option<chrono::DateTime<Utc>>) = sqlx::query_as(
        "SELECT (SELECT min(window_start) FROM llm_metrics),
                (SELECT min(bucket_start) FROM llm_metrics_rollups)",
    )
    .fetch_one(&world.pool)
    .await
    .expect("oldest");
    assert!(
        oldest.0.unwrap() >= cutoff && oldest.1.unwrap() >= cutoff,
        "{oldest:?} vs {cutoff}"
    );
    let partitions: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'llm_metrics'::regclass AND c.relname <> 'llm_metrics_default'",
    )
    .fetch_all(&world.pool)
    .await
    .expect("partitions");
    let first = format!("llm_metrics_p{}", cutoff.format("%Y%m%d"));
    assert!(
        partitions.iter().all(|p| *p >= first),
        "{partitions:?} from {first}"
    );
    let (stored, from_minutes) = rollups_stored_and_from_minutes(&world.pool, &world.tenant).await;
    assert_eq!(stored, from_minutes);
    // The tenant's daily rows: routes and models merged.
    let days: u64 = stored
        .iter()
        .filter(|(k, _)| k.seconds == 86_400 && k.route.is_empty() && k.model.is_empty())
        .map(|(_, a)| a.requests)
        .sum();
    assert_eq!(
        days as i64, kept,
        "the daily rows hold exactly the calls kept"
    );
}

/// Windows stored before roll-ups existed: until they are built, the roll-ups are not
/// complete (queries read minute rows); building them makes every bucket equal its minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roll_ups_of_windows_stored_before_them_are_built_once() {
    let postgres = OwnPostgres::start();
    let world = World::with_database(postgres.dsn()).await;
    let (store, _, epochs) = claimed_store(&world).await;
    let now = Utc::now();
    let calls: Vec<Call> = (0..30)
        .map(|i| Call {
            minutes_ago: i * 131,
            second: 1,
            route: i as usize % 3,
            model: 0,
            latency_ms: 250,
            completion_tokens: 7,
            error: None,
            provider: 1,
        })
        .collect();
    store
        .commit(&flush_of(&world.tenant, 0, &calls, now), &epochs, "flush-0")
        .await
        .expect("commit");
    // As a database upgraded from before roll-ups: minute rows only.
    sqlx::raw_sql("DELETE FROM llm_metrics_rollups; UPDATE rollup_state SET complete = false")
        .execute(&world.pool)
        .await
        .expect("reset");
    assert!(!rollups::complete(&world.pool).await.unwrap());
    let built = rollups::ensure_complete(&world.pool).await.expect("build");
    assert_eq!(built.map(|b| b.minute_rows), Some(30));
    assert!(rollups::complete(&world.pool).await.unwrap());
    let (stored, from_minutes) = rollups_stored_and_from_minutes(&world.pool, &world.tenant).await;
    assert_eq!(stored, from_minutes);
    assert_eq!(
        stored.values().filter(|a| a.requests > 0).count(),
        stored.len()
    );
    // Complete now: a second start-up builds nothing.
    assert_eq!(
        rollups::ensure_complete(&world.pool).await.expect("check"),
        None
    );
}

/// A database from before partitioning, upgraded: every window and roll-up row is kept, each
/// in its day's partition, none left in the default one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partitioning_migration_keeps_every_window_and_roll_up() {
    let postgres = OwnPostgres::start();
    let pool = infra::db::connect(&postgres.dsn(), 2)
        .await
        .expect("Postgres answers");
    // The migrations before partitioning, as an older release applied them.
    migrate_before(&pool, "20240511").await;
    // Forty days of windows of three series, every 17 minutes, and a roll-up row a day.
    sqlx::raw_sql(
        "INSERT INTO llm_metrics (tenant_id, route, model, window_start, window_end, requests,
             prompt_tokens, providers, published_at, updated_at)
         SELECT 'acme', '/r' || s, 'm', ts, ts + interval '1 minute', 3, 100 + s,
                '{\"openai\": 3}', now(), now()
         FROM generate_series(date_trunc('minute', now()) - interval '40 days',
                              date_trunc('minute', now()), interval '17 minutes') AS ts,
              generate_series(1, 3) AS s;
         INSERT INTO llm_metrics_rollups (tenant_id, bucket_seconds, bucket_start, route, model,
             requests)
         SELECT 'acme', 86400, d, '/r1', 'm', 7
         FROM generate_series(date_trunc('day', now()) - interval '40 days',
                              date_trunc('day', now()), interval '1 day') AS d;",
    )
    .execute(&pool)
    .await
    .expect("rows");
    let totals = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (i64, i64, i64, i64, i64)>(
            "SELECT (SELECT count(*) FROM llm_metrics), (SELECT sum(requests) FROM llm_metrics)::bigint,
                    (SELECT sum(prompt_tokens) FROM llm_metrics)::bigint,
                    (SELECT count(*) FROM llm_metrics WHERE providers = '{\"openai\": 3}'),
                    (SELECT sum(requests) FROM llm_metrics_rollups)::bigint",
        )
        .fetch_one(&pool)
        .await
        .expect("totals")
    };
    let was = totals(pool.clone()).await;
    assert!(was.0 > 10_000, "{was:?}");

    infra::db::migrate(&pool)
        .await
        .expect("the partitioning migration applies");
    assert_eq!(
        totals(pool.clone()).await,
        was,
        "every row kept, every figure the same"
    );
    let (partitions, in_default): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_inherits WHERE inhparent = 'llm_metrics'::regclass),
                (SELECT count(*) FROM llm_metrics_default) + (SELECT count(*) FROM llm_metrics_rollups_default)",
    )
    .fetch_one(&pool)
    .await
    .expect("partitions");
    assert!(
        partitions >= 41 + 2,
        "a partition a day and the default: {partitions}"
    );
    assert_eq!(in_default, 0, "every row is in its day's partition");
}

/// Applies the migrations older than `version`, as an older release did.
async fn migrate_before(pool: &sqlx::PgPool, version: &str) {
    let older = std::env::temp_dir().join(unique("migrations-"));
    std::fs::create_dir_all(&older).unwrap();
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    for file in std::fs::read_dir(&all).unwrap() {
        let path = file.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < version {
            std::fs::copy(&path, older.join(&name)).unwrap();
        }
    }
    let before = sqlx::migrate::Migrator::new(older.as_path())
        .await
        .expect("older migrations");
    before.run(pool).await.expect("older migrations apply");
    std::fs::remove_dir_all(&older).unwrap();
}

/// Windows counted before unpriced calls' tokens were kept: the migration gives each window
/// whose calls were all unpriced all its tokens, a window with some unpriced calls their
/// share, and every roll-up row the sum of the minute rows it covers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unpriced_tokens_migration_fills_windows_and_roll_ups() {
    let postgres = OwnPostgres::start();
    let pool = infra::db::connect(&postgres.dsn(), 2)
        .await
        .expect("Postgres answers");
    migrate_before(&pool, "20240514").await;
    // Two days of windows every 7 minutes: model `a` all unpriced, `b` a quarter of its
    // calls unpriced, `c` priced; and their roll-ups as the processor kept them.
    sqlx::raw_sql(
        "INSERT INTO llm_metrics (tenant_id, route, model, window_start, window_end, requests,
             completed, prompt_tokens, completion_tokens, unpriced)
         SELECT 'acme', '/r', m, ts, ts + interval '1 minute', 4, 4, 400 + n, 40,
                CASE m WHEN 'a' THEN 4 WHEN 'b' THEN 1 ELSE 0 END
         FROM generate_series(date_trunc('day', now()) - interval '1 day',
                              date_trunc('day', now()) + interval '23 hours',
                              interval '7 minutes') WITH ORDINALITY AS t(ts, n),
              unnest(ARRAY['a', 'b', 'c']) AS m;
         INSERT INTO llm_metrics_rollups (tenant_id, bucket_seconds, bucket_start, route, model,
             requests, unpriced)
         SELECT 'acme', b.seconds,
                to_timestamp(floor(extract(epoch FROM window_start) / b.seconds) * b.seconds),
                route, model, sum(requests), sum(unpriced)
         FROM llm_metrics, (VALUES (300), (3600), (86400)) AS b(seconds)
         GROUP BY 2, 3, 4, 5;",
    )
    .execute(&pool)
    .await
    .expect("rows");
    infra::db::migrate(&pool)
        .await
        .expect("the migration applies");

    let wrong: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM llm_metrics WHERE unpriced_tokens IS DISTINCT FROM
             CASE model WHEN 'a' THEN prompt_tokens + completion_tokens
                        WHEN 'b' THEN round((prompt_tokens + completion_tokens) / 4.0)
                        ELSE 0 END",
    )
    .fetch_one(&pool)
    .await
    .expect("windows");
    assert_eq!(
        wrong, 0,
        "windows without the tokens of their unpriced calls"
    );
    let (rollups, differing): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE r.unpriced_tokens IS DISTINCT FROM
             (SELECT coalesce(sum(m.unpriced_tokens), 0)::bigint FROM llm_metrics m
              WHERE m.tenant_id = r.tenant_id AND m.route = r.route AND m.model = r.model
                AND m.window_start >= r.bucket_start
                AND m.window_start < r.bucket_start + make_interval(secs => r.bucket_seconds)))
         FROM llm_metrics_rollups r",
    )
    .fetch_one(&pool)
    .await
    .expect("roll-ups");
    assert!(rollups > 3 * (2 + 48 + 576 / 2), "{rollups} roll-up rows");
    assert_eq!(differing, 0, "roll-ups unequal to their minute rows");
}

/// Four weeks of calls of `tenant` (three models, two routes, every token type), counted by an
/// engine pricing them at `table`, as one flush; each `batch` its own calls, a few seconds
/// apart from the other batches' (mostly in the same windows).
fn a_month_priced_at(
    tenant: &str,
    table: &PricingTable,
    now: chrono::DateTime<Utc>,
    batch: i64,
) -> Flush {
    use metrics_core::events::Event;
    let mut engine = Engine::new(EngineConfig::default(), table.clone());
    engine.assign(
        0,
        [(Input::Requests, None), (Input::Responses, None)],
        Vec::new(),
        now,
    );
    // Four weeks back: inside the default 30-day retention, which processors of other tests
    // sharing the database enforce by dropping older days.
    let first = Level::Day.bucket(now) - TimeDelta::days(28);
    for i in 0..900_i64 {
        let at = first + TimeDelta::seconds(i * 2_600 + batch * 3);
        let id = format!("b{batch}-m{i}");
        let mut asked = request(tenant, &id, at);
        if let Event::Request(r) = &mut asked {
            r.route = ["/chat", "/search"][(i % 2) as usize].parse().unwrap();
            r.model = ["gpt-4o-2024-08-06", "in-house", "retired"][(i % 3) as usize]
                .parse()
                .unwrap();
            r.prompt_tokens = 200 + (i as u64 * 37) % 5_000;
        }
        let mut answered = response(tenant, &id, at);
        if let Event::Response(r) = &mut answered {
            let i = i as u64;
            r.completion_tokens = 10 + (i * 13) % 900;
            r.cached_prompt_tokens = (!i.is_multiple_of(4)).then_some((i * 29) % 180);
            r.cache_creation_tokens = i.is_multiple_of(5).then_some(15);
            r.reasoning_tokens = i.is_multiple_of(3).then_some((i * 7) % 300);
        }
        engine.apply(source(Input::Requests, i), asked, now);
        engine.apply(source(Input::Responses, i), answered, now);
    }
    engine.reached_end(Input::Requests, 0);
    engine.reached_end(Input::Responses, 0);
    engine.flush(now + TimeDelta::hours(1)).0
}

/// Per minute row: its cost figures, `estimated_cost_usd`, its revision.
type MinuteCosts = BTreeMap<(String, String, chrono::DateTime<Utc>), (Vec<i64>, f64, i64)>;

/// The cost columns of a tenant's minute rows (with each row's revision) and of its roll-up
/// rows, by key.
async fn costs_of(
    pool: &sqlx::PgPool,
    tenant: &str,
) -> (
    MinuteCosts,
    BTreeMap<(i32, chrono::DateTime<Utc>, String, String), Vec<i64>>,
) {
    let costs = "cost_nanos, unpriced, cost_input_nanos, cost_cached_input_nanos, \
                 cost_cache_write_nanos, cost_output_nanos, cost_reasoning_nanos, unpriced_tokens";
    let figures = |row: &sqlx::postgres::PgRow| -> Vec<i64> {
        (0..8).map(|i| row.get::<i64, _>(i + 3)).collect()
    };
    let minutes = sqlx::query(&format!(
        "SELECT route, model, window_start, {costs}, estimated_cost_usd, revision
         FROM llm_metrics WHERE tenant_id = $1"
    ))
    .bind(tenant)
    .fetch_all(pool)
    .await
    .expect("minute rows")
    .iter()
    .map(|row| {
        (
            (row.get(0), row.get(1), row.get(2)),
            (
                figures(row),
                row.get("estimated_cost_usd"),
                row.get("revision"),
            ),
        )
    })
    .collect();
    let rollups = sqlx::query(&format!(
        "SELECT route, model, bucket_start, {costs}, bucket_seconds
         FROM llm_metrics_rollups WHERE tenant_id = $1"
    ))
    .bind(tenant)
    .fetch_all(pool)
    .await
    .expect("roll-up rows")
    .iter()
    .map(|row| {
        (
            (
                row.get("bucket_seconds"),
                row.get(2),
                row.get(0),
                row.get(1),
            ),
            figures(row),
        )
    })
    .collect();
    (minutes, rollups)
}

/// A price table, and the one replacing it: gpt-4o cheaper with a change mid-month at a
/// minute off the hour, `in-house` priced for the first time, `retired` no longer priced.
fn old_and_new_prices(now: chrono::DateTime<Utc>) -> (PricingTable, PricingTable) {
    let change =
        (Level::Day.bucket(now) - TimeDelta::days(15) + TimeDelta::minutes(727)).to_rfc3339();
    let old = PricingTable::with_file(
        r#"{"models": {"gpt-4o": {"input": 5, "output": 15}, "retired": {"input": 1, "output": 2}}}"#,
    )
    .unwrap();
    let new = PricingTable::with_file(&format!(
        r#"{{"models": {{
            "gpt-4o": [{{"input": 2.5, "output": 10, "cached_input": 1.25}},
                       {{"valid_from": "{change}", "input": 2, "output": 8, "cached_input": 0.5,
                         "cache_write": 2.75, "reasoning": 12}}],
            "in-house": {{"input": 0.3, "output": 0.6, "cached_input": 0.075}}}}}}"#
    ))
    .unwrap();
    (old, new)
}

/// Re-pricing a month under a new table equals counting the same calls under that table
/// from the start: the minute rows and every roll-up row, cost by type and unpriced calls,
/// with a price that changes mid-month, a model that gains a price and one that loses it.
/// Each changed row is a new revision (so `llm.metrics` follows), and the audit row holds
/// the totals before and after. Prices are in whole nano-dollars a token, where counting per
/// call and re-pricing per window agree to the nano-dollar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repricing_a_month_equals_pricing_it_from_scratch() {
    let world = World::new().await;
    let now = Utc::now();
    let (old, new) = old_and_new_prices(now);
    let (repriced, scratch) = (unique("repriced-"), unique("scratch-"));
    for (tenant, table) in [(&repriced, &old), (&scratch, &new)] {
        let (store, _, epochs) = claimed_store(&world).await;
        let flush = a_month_priced_at(tenant, table, now, 0);
        store
            .commit(&flush, &epochs, "month")
            .await
            .expect("commit");
    }
    let (before, _) = costs_of(&world.pool, &repriced).await;
    let (from, to) = (
        Level::Day.bucket(now) - TimeDelta::days(32),
        Level::Day.bucket(now),
    );
    let done = infra::reprice::reprice(&world.pool, &new, Some(&repriced), from, to, "test")
        .await
        .expect("re-pricing");

    let (minutes, rollups) = costs_of(&world.pool, &repriced).await;
    let (expected_minutes, expected_rollups) = costs_of(&world.pool, &scratch).await;
    assert!(minutes.len() > 800, "{} windows", minutes.len());
    assert_eq!(done.windows as usize, minutes.len());
    let strip = |m: &MinuteCosts| {
        m.iter()
            .map(|(k, (c, usd, _))| (k.clone(), (c.clone(), *usd)))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        strip(&minutes),
        strip(&expected_minutes),
        "minute rows as if priced so from the start"
    );
    assert_eq!(
        rollups, expected_rollups,
        "roll-ups as if priced so from the start"
    );
    let mut changed = 0;
    for (key, (costs, _, revision)) in &minutes {
        let (was, _, was_revision) = &before[key];
        let expected = was_revision + i64::from(costs != was);
        assert_eq!(
            *revision, expected,
            "a new revision only where the cost changed"
        );
        changed += usize::from(costs != was);
    }
    assert_eq!(done.changed as usize, changed);
    assert!(changed > 500, "{changed}");
    let total = |m: &MinuteCosts, i: usize| -> i64 { m.values().map(|(c, _, _)| c[i]).sum() };
    let audit: (String, Option<String>, i64, i64, i64, i64, bool) = sqlx::query_as(
        "SELECT actor, tenant_id, old_cost_nanos, new_cost_nanos, old_unpriced, new_unpriced,
                finished_at IS NOT NULL
         FROM price_reprices WHERE id = $1",
    )
    .bind(done.id)
    .fetch_one(&world.pool)
    .await
    .expect("the audit row");
    assert_eq!(
        audit,
        (
            "test".to_owned(),
            Some(repriced.clone()),
            total(&before, 0),
            total(&expected_minutes, 0),
            total(&before, 1),
            total(&expected_minutes, 1),
            true
        )
    );
    assert!(total(&before, 1) > 0 && total(&expected_minutes, 1) > 0);
    assert!(
        total(&before, 7) > 0 && total(&expected_minutes, 7) > 0,
        "unpriced calls' tokens"
    );

    // Once more under the same table: nothing changes.
    let again = infra::reprice::reprice(&world.pool, &new, Some(&repriced), from, to, "test")
        .await
        .expect("re-pricing again");
    assert_eq!((again.changed, again.windows), (0, done.windows));
    assert_eq!(costs_of(&world.pool, &repriced).await.0, minutes);
}

/// Re-pricing while processors, already on the new table, keep merging late calls into the
/// windows being re-priced: whatever the interleaving, every minute row and roll-up row ends as
/// if all calls had been counted under the new table, and nothing a commit added is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_racing_a_repricing_keep_what_they_add() {
    let world = World::new().await;
    let now = Utc::now();
    let (old, new) = old_and_new_prices(now);
    let (repriced, scratch) = (unique("racing-"), unique("scratch-"));
    let (store, _, epochs) = claimed_store(&world).await;
    let first = a_month_priced_at(&repriced, &old, now, 0);
    store.commit(&first, &epochs, "old").await.expect("commit");
    let late: Vec<Flush> = (1..=4)
        .map(|batch| a_month_priced_at(&repriced, &new, now, batch))
        .collect();
    let (scratch_store, _, scratch_epochs) = claimed_store(&world).await;
    for batch in 0..=4 {
        let flush = a_month_priced_at(&scratch, &new, now, batch);
        scratch_store
            .commit(&flush, &scratch_epochs, &format!("scratch-{batch}"))
            .await
            .expect("commit");
    }
    let commits = tokio::spawn(async move {
        for (i, flush) in late.iter().enumerate() {
            // A commit that loses a deadlock to the re-pricing is retried, as the pipeline does.
            let mut attempts = 0;
            while let Err(e) = store.commit(flush, &epochs, &format!("late-{i}")).await {
                attempts += 1;
                assert!(attempts < 10, "commit {i}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let (from, to) = (
        Level::Day.bucket(now) - TimeDelta::days(32),
        Level::Day.bucket(now),
    );
    // Runs again and again while the commits go on, so each of them races one. A run after
    // the last commit would not mend what a race broke: a roll-up row changes only by what
    // its minute rows change.
    let mut first_run = true;
    while !commits.is_finished() || first_run {
        infra::reprice::reprice(&world.pool, &new, Some(&repriced), from, to, "test")
            .await
            .expect("re-pricing");
        first_run = false;
    }
    commits.await.expect("the late commits");

    let (minutes, rollups) = costs_of(&world.pool, &repriced).await;
    let (expected_minutes, expected_rollups) = costs_of(&world.pool, &scratch).await;
    let strip = |m: &MinuteCosts| {
        m.iter()
            .map(|(k, (c, usd, _))| (k.clone(), (c.clone(), *usd)))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(strip(&minutes), strip(&expected_minutes));
    assert_eq!(rollups, expected_rollups);
    let requests = |tenant: &str| {
        sqlx::query_scalar::<_, i64>(
            "SELECT sum(requests)::bigint FROM llm_metrics WHERE tenant_id = $1",
        )
        .bind(tenant.to_owned())
        .fetch_one(&world.pool)
    };
    assert_eq!(requests(&repriced).await.unwrap(), 5 * 900);
    assert_eq!(requests(&scratch).await.unwrap(), 5 * 900);
}

/// A flush of partition `partition` alone, as the instance owning it makes one: `n` calls of
/// `tenant` stamped `at`, failed or not, closed by a clock an hour on.
fn partition_flush(tenant: &str, partition: i32, n: i64, failed: bool, at: DateTime<Utc>) -> Flush {
    let now = Utc::now();
    let mut engine = Engine::new(EngineConfig::default(), PricingTable::default());
    engine.assign(
        partition,
        [(Input::Requests, None), (Input::Responses, None)],
        Vec::new(),
        now,
    );
    let from = |input, offset| Source {
        partition,
        ..source(input, offset)
    };
    for i in 0..n {
        let id = format!("p{partition}-{i}");
        engine.apply(from(Input::Requests, i), request(tenant, &id, at), now);
        let mut answer = response(tenant, &id, at);
        if let (true, Event::Response(r)) = (failed, &mut answer) {
            r.error = Some("upstream 500".into());
        }
        engine.apply(from(Input::Responses, i), answer, now);
    }
    engine.reached_end(Input::Requests, partition);
    engine.reached_end(Input::Responses, partition);
    engine.flush(now + TimeDelta::hours(1)).0
}

/// Two instances of a group, each owning one partition, write their parts of a tenant's
/// minute at different commits: four failed calls on one, four good ones on the other. Until
/// both have written it, the group's closed minutes stop before it, so an error-rate rule
/// (above 50%) is never shown the failed half alone; once both have, it sees 50% and stays
/// quiet.
/// A partition no instance has written for longer than a rebalance stops holding it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_judge_only_minutes_every_partition_has_closed() {
    let world = World::new().await;
    let tenant = world.tenant.clone();
    let group = unique("closed-");
    let (requests, responses) = (unique("req-"), unique("resp-"));
    let mut instances = Vec::new();
    for partition in [0, 1] {
        let store = Store::new(world.pool.clone(), &group, &requests, &responses);
        let claimed = store.claim(&[partition]).await.expect("claim");
        let epochs: HashMap<(Input, i32), i64> = claimed
            .claims
            .iter()
            .map(|c| ((c.input, c.partition), c.epoch))
            .collect();
        instances.push((store, epochs));
    }
    let spec: metrics_core::alerts::RuleSpec = serde_json::from_value(serde_json::json!({
        "name": "errors", "metric": "error_rate", "op": ">", "threshold": 0.5,
        "window": "2h", "min_requests": 2}))
    .unwrap();
    let checked = spec.check(|_| true).unwrap();
    let (rule, _) = infra::alerts::create_rule(&world.pool, &tenant, &checked)
        .await
        .unwrap();
    let grace = TimeDelta::seconds(2);
    let closed = || infra::alerts::closed_until(&world.pool, &group, grace);
    let evaluate = |end| infra::alerts::evaluate_tenant(&world.pool, &tenant, end, Level::Minute);
    let at = Utc::now() - TimeDelta::minutes(10);
    let minute_end = at.duration_trunc(TimeDelta::minutes(1)).unwrap() + TimeDelta::minutes(1);

    // The second instance last wrote before the minute ended on its partition.
    sqlx::query(
        "UPDATE processor_positions SET watermark = $2
         WHERE consumer_group = $1 AND partition = 1",
    )
    .bind(&group)
    .bind(at - TimeDelta::minutes(5))
    .execute(&world.pool)
    .await
    .unwrap();
    // The failed half is written; partition 1 still holds the minute back.
    let (store, epochs) = &instances[0];
    store
        .commit(&partition_flush(&tenant, 0, 4, true, at), epochs, "a-1")
        .await
        .expect("commit");
    let held = closed().await.unwrap().expect("both have watermarks");
    assert!(held < minute_end, "partition 1 holds it back: {held}");
    // Judged at the newest minute written, as a rule was before, it would have fired.
    let early = closed_at_written(&world.pool, &tenant).await.unwrap();
    assert_eq!(early, minute_end);
    let seen = infra::rollups::merged(
        &world.pool,
        &tenant,
        None,
        None,
        early - TimeDelta::hours(2),
        early,
        Level::Minute,
    )
    .await
    .unwrap();
    let verdict = checked.condition.evaluate(&seen, State::Ok);
    assert_eq!(verdict.transition, Some(State::Firing));

    // The good half is written: the minute is closed everywhere, and it is 50% errors.
    let (store, epochs) = &instances[1];
    store
        .commit(&partition_flush(&tenant, 1, 4, false, at), epochs, "b-1")
        .await
        .expect("commit");
    let end = closed()
        .await
        .unwrap()
        .expect("both partitions have a watermark");
    assert!(end >= minute_end, "{end} {minute_end}");
    let done = evaluate(end).await.unwrap();
    assert_eq!((done.rules, done.transitions), (1, 0));
    let (state, value): (String, Option<f64>) =
        sqlx::query_as("SELECT state, value FROM alert_rules WHERE id = $1")
            .bind(rule.id)
            .fetch_one(&world.pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), value), ("ok", Some(0.5)));

    // Partition 1's instance is gone and nobody took it over for longer than a rebalance.
    sqlx::query(
        "UPDATE processor_positions SET watermark = $2, updated_at = now() - interval '11 minutes'
         WHERE consumer_group = $1 AND partition = 1",
    )
    .bind(&group)
    .bind(at - TimeDelta::hours(1))
    .execute(&world.pool)
    .await
    .unwrap();
    assert_eq!(
        closed().await.unwrap(),
        Some(end),
        "partition 0 alone decides"
    );
}

/// The end of the newest window of `tenant` written so far: where alert rules were judged
/// before they waited for every partition.
async fn closed_at_written(pool: &sqlx::PgPool, tenant: &str) -> Option<DateTime<Utc>> {
    sqlx::query_scalar("SELECT max(window_end) FROM llm_metrics WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(pool)
        .await
        .unwrap()
}
