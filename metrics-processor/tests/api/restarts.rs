//! Restarts the way supervisors make them: a crash, an immediate restart, another crash soon
//! after. Whatever the timing, the group ends up reading every partition again by itself and
//! counts exactly what a clean run counts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use crate::helpers::{minute, Processor, World};

// (requests, errors, timeouts, completed) by (model, window start), as `World::windows`.

/// A small deterministic generator, so that a failing timing can be run again from its seed.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Milliseconds in `from..=to`.
    fn ms(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from + 1))
    }
}

type Windows = HashMap<(String, DateTime<Utc>), (i64, i64, i64, i64)>;

/// Pairs `from..to`, every 40th without its response (a timeout), every 11th failed, and the
/// windows a clean run stores for them.
fn traffic(world: &World, from: i64, to: i64, expected: &mut Windows) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    for n in from..to {
        let id = format!("{}-{n}", world.tenant);
        let at = minute(6, 0) + TimeDelta::milliseconds(n * 60);
        let model = if n % 3 == 0 { "gpt-4o" } else { "gpt-4o-mini" };
        let window = at.duration_trunc(TimeDelta::minutes(1)).unwrap();
        let row = expected.entry((model.to_owned(), window)).or_default();
        row.0 += 1;
        events.push(world.request(&id, at, model));
        if n % 40 == 0 {
            row.2 += 1;
            continue;
        }
        row.3 += 1;
        if n % 11 == 0 {
            row.1 += 1;
        }
        events.push(world.response(
            &id,
            at + TimeDelta::seconds(1),
            40 + (n as u64 % 700),
            n % 11 == 0,
        ));
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_counts_exactly_what_a_clean_run_counts_whatever_the_timing() {
    let runs: u64 = std::env::var("TEST_CRASH_LOOP_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| Utc::now().timestamp_micros() as u64);
    let mut dice = Dice(seed);
    for run in 0..runs {
        let world = World::new().await;
        let mut expected = Windows::new();
        world
            .produce(&traffic(&world, 0, 2500, &mut expected))
            .await;
        let (first_kill, first_restart) = (dice.ms(300, 4000), dice.ms(0, 1500));
        let (second_kill, second_restart) = (dice.ms(0, 5000), dice.ms(0, 5000));
        let timing = format!(
            "seed {seed} run {run}: kill {first_kill:?} after start, restart {first_restart:?} \
             later, kill {second_kill:?} after it is healthy, restart {second_restart:?} later \
             (or once more input is in)"
        );
        eprintln!("{timing}");
        let first = Processor::start(&world);
        tokio::time::sleep(first_kill).await;
        first.crash();
        tokio::time::sleep(first_restart).await;
        let second = Processor::start(&world);
        second.wait_healthy(Duration::from_secs(30)).await;
        tokio::time::sleep(second_kill).await;
        second.crash();
        let crashed = Instant::now();
        // More input while the dead members still hold the group, so that the group settles
        // with partitions whose ends have moved past everything stored. Produced before the
        // restart, not while it reads: these halves are stamped more than a TTL ago, and read
        // live, a request whose response reached the broker over a second after it (a busy
        // machine) would rightly time out by the clock once its partitions fell idle — in a
        // clean run as well.
        world
            .produce(&traffic(&world, 2500, 5000, &mut expected))
            .await;
        tokio::time::sleep(second_restart.saturating_sub(crashed.elapsed())).await;
        let last = Processor::start(&world);
        let started = Instant::now();
        loop {
            let stored = world.windows().await;
            if stored == expected {
                break;
            }
            if started.elapsed() > Duration::from_secs(120) {
                let mut wrong: Vec<_> = expected
                    .iter()
                    .filter(|(k, v)| stored.get(*k) != Some(*v))
                    .map(|(k, v)| (k, v, stored.get(k)))
                    .collect();
                wrong.sort();
                // Which calls went astray: the traffic has no orphans of its own.
                let dead: Vec<String> = world
                    .read("dlq")
                    .into_iter()
                    .map(|(key, payload, headers)| {
                        format!("{key}: {} {headers:?}", String::from_utf8_lossy(&payload))
                    })
                    .collect();
                panic!(
                    "not exact 120 s after the last restart ({timing}): (window, expected, \
                     stored) {wrong:?}; dead letters: {dead:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let recovered = started.elapsed();
        let deadline = Instant::now() + Duration::from_secs(30);
        while last.get("/ready").is_none_or(|(status, _)| status != 200) {
            assert!(
                Instant::now() < deadline,
                "not ready after counting everything ({timing})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Nothing more arrives later: counted once, not once and then again.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(world.windows().await, expected, "{timing}");
        eprintln!(
            "exact {:.1} s after the last restart",
            recovered.as_secs_f64()
        );
        last.stop();
    }
}

/// Partitions added to the input topics move keys to other partitions: the processor must
/// stop with an error that says what to do, not join halves wrongly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_input_layout_stops_the_processor_with_what_to_do() {
    let world = World::new().await;
    // The group's state was built on 2 partitions; the topics now have 3.
    for topic in [world.topic("requests"), world.topic("responses")] {
        sqlx::query(
            "INSERT INTO processor_layout (consumer_group, topic, partitions) VALUES ($1, $2, 2)",
        )
        .bind(format!("group-{}", world.suffix))
        .bind(topic)
        .execute(&world.pool)
        .await
        .expect("layout");
    }
    let (status, log) = Processor::run_to_exit(&world, Duration::from_secs(60));
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("has 3 partitions but this consumer group's state was built on 2")
            && log.contains("CONSUMER_GROUP"),
        "{log}"
    );
}

/// A restart resumes at the oldest record still needed, which often lies inside a record
/// batch. Tansu 0.6 answers a fetch from inside a batch with the next batch: without reading
/// again from further back, the waiting requests from the resume offset to the batch's end
/// were never read, and their responses became orphans (the first minute of the fault runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resuming_inside_a_record_batch_reads_the_whole_batch() {
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let world = World::new().await;
    let partitions = 3;
    // One batch per partition: a poison record first, then requests that wait for their
    // responses. The poison is passed by, so each partition's resume offset is 1.
    let producer: FutureProducer = infra::kafka::KafkaSettings::new(&world.brokers, partitions)
        .producer_config("batch-test", Duration::from_secs(10))
        .set("linger.ms", "500")
        .create()
        .expect("producer");
    let now = Utc::now();
    let ids: Vec<String> = (0..60).map(|n| format!("{}-{n}", world.tenant)).collect();
    let requests = world.topic("requests");
    let mut records: Vec<(i32, String, Vec<u8>)> = (0..partitions)
        .map(|p| (p, format!("poison-{p}"), b"not json".to_vec()))
        .collect();
    for id in &ids {
        let partition = infra::kafka::partition_for(id.as_bytes(), partitions);
        let request = world.request(id, now, "gpt-4o");
        records.push((partition, id.clone(), serde_json::to_vec(&request).unwrap()));
    }
    // Queued all at once (`send` would wait for each), so that they leave together.
    let sends: Vec<_> = records
        .iter()
        .map(|(partition, key, payload)| {
            producer
                .send_result(
                    FutureRecord::to(&requests)
                        .partition(*partition)
                        .key(key)
                        .payload(payload),
                )
                .map_err(|(e, _)| e)
                .expect("queued")
        })
        .collect();
    for send in sends {
        send.await
            .expect("delivered")
            .expect("the broker acknowledges");
    }

    let first = Processor::start(&world);
    first.wait_healthy(Duration::from_secs(30)).await;
    // Every request read and waiting; the poison passed by: each partition resumes at 1.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resumes: Vec<i64> = sqlx::query_scalar(
            "SELECT resume FROM processor_positions WHERE consumer_group = $1 AND topic = $2",
        )
        .bind(format!("group-{}", world.suffix))
        .bind(&requests)
        .fetch_all(&world.pool)
        .await
        .expect("query");
        if resumes.len() == partitions as usize && resumes.iter().all(|&r| r == 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first instance did not commit resume offset 1 everywhere: {resumes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.crash();

    let responses: Vec<_> = ids
        .iter()
        .map(|id| world.response(id, now + TimeDelta::seconds(1), 300, false))
        .collect();
    world.produce(&responses).await;
    let _second = Processor::start(&world);
    let window = now.duration_trunc(TimeDelta::minutes(1)).unwrap();
    // The window closes a grace after the minute ends (the input falls idle at once).
    world
        .wait_for(
            "every call of the batch counted",
            Duration::from_secs(100),
            |w| w.get(&("gpt-4o".to_owned(), window)) == Some(&(60, 0, 0, 60)),
        )
        .await;
    // The letters about this test's records. Every processor evaluates every tenant's alert
    // rules, and the tests share one database: a rule another test left behind, with a webhook
    // that no longer answers, can have its alert dead-lettered here too (`alert_webhook`).
    let responses = world.topic("responses");
    let letters: Vec<_> = world
        .read("dlq")
        .into_iter()
        .filter(|(_, _, headers)| {
            headers
                .get("dlq.topic")
                .is_some_and(|t| *t == requests || *t == responses)
        })
        .collect();
    assert_eq!(
        letters.len(),
        partitions as usize,
        "only the poison is dead-lettered, no response as an orphan: {:?}",
        letters.iter().map(|l| &l.0).collect::<Vec<_>>()
    );
}
