//! The Postgres store alone: what only a real database can show (a retry racing the commit
//! it repeats, publishing under concurrent changes). The behaviour both stores share is in
//! `contract.rs`.

use chrono::{TimeDelta, Utc};
use metrics_core::pricing::PricingTable;
use metrics_processor::domain::engine::{Engine, EngineConfig, Flush};
use metrics_processor::domain::offsets::Input;
use metrics_processor::output::MetricRow;
use metrics_processor::store::Store;
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
