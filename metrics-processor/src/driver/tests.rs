//! The processor simulated: a broker's partitions, the store, and instances that run the
//! driver (the code the binary runs) through crashes, rebalances, takeovers and store faults,
//! against a run without any. Only the store is in memory ([`MemoryStore`], held to the
//! Postgres store's behaviour by the contract suite in `tests/api/contract.rs`).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use metrics_core::events::Event;
use proptest::prelude::*;

use super::memory::{Fault, MemoryStore};
use super::*;
use crate::domain::engine::tests::{config, request, response, src, t};
use crate::domain::engine::EngineConfig;
use crate::domain::window::{Aggregate, WindowKey};
use metrics_core::pricing::PricingTable;

/// Two input topics of `partitions` partitions, records placed by key as the producers do.
#[derive(Debug, Clone, Default)]
struct Topics {
    partitions: i32,
    records: HashMap<(Input, i32), Vec<Event>>,
}

impl Topics {
    fn new(partitions: i32) -> Self {
        Self {
            partitions,
            records: HashMap::new(),
        }
    }

    fn produce(&mut self, event: Event) {
        let partition = infra::kafka::partition_for(event.request_id().as_bytes(), self.partitions);
        let input = match event {
            Event::Request(_) => Input::Requests,
            Event::Response(_) => Input::Responses,
        };
        self.records
            .entry((input, partition))
            .or_default()
            .push(event);
    }

    fn len(&self, input: Input, partition: i32) -> i64 {
        self.records
            .get(&(input, partition))
            .map_or(0, |r| r.len() as i64)
    }

    fn get(&self, input: Input, partition: i32, offset: i64) -> Event {
        self.records[&(input, partition)][offset as usize].clone()
    }
}

/// What a run leaves behind: the database and the dead-letter topic's request ids.
#[derive(Debug, Default)]
struct Store {
    db: MemoryStore,
    dead_letters: HashSet<String>,
}

impl Store {
    fn rows(&self) -> HashMap<WindowKey, Aggregate> {
        self.db.rows()
    }

    /// Totals by key, for comparing runs: every sum and count, and the histograms' contents.
    fn totals(&self) -> Vec<String> {
        let mut rows: Vec<String> = self
            .rows()
            .iter()
            .map(|(k, a)| {
                format!(
                    "{} {} req={} err={} to={} done={} lat={} ttft={}/{} tok={}/{}/{} cost={} unpriced={} hist={:?} ttfth={:?}",
                    k.metrics_key(), k.start.format("%H:%M"), a.requests, a.errors, a.timeouts, a.completed,
                    a.latency_sum_ms, a.ttft_sum_ms, a.ttft_count, a.prompt_tokens, a.completion_tokens,
                    a.cached_prompt_tokens, a.cost_nanos, a.unpriced,
                    a.latency.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect::<Vec<_>>(),
                    a.ttft.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect::<Vec<_>>(),
                )
            })
            .collect();
        rows.sort();
        rows
    }
}

/// Dead letters go to the run's set, acknowledged at once.
struct Letters<'a>(&'a mut HashSet<String>);

impl Outputs for Letters<'_> {
    fn act(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            if let Effect::DeadLetter { key, .. } = effect {
                self.0.insert(key);
            }
        }
    }

    fn delivered(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// A processor instance: the driver plus the read positions of its consumer.
struct Instance {
    driver: Driver<MemoryStore>,
    next: HashMap<(Input, i32), i64>,
    now: DateTime<Utc>,
}

impl Instance {
    /// Starts on every partition, resuming where the store says.
    fn start(topics: &Topics, store: &mut Store) -> Self {
        Self::start_on(store, 0..topics.partitions)
    }

    fn start_on(store: &mut Store, partitions: impl IntoIterator<Item = i32>) -> Self {
        Self::start_with(store, config(), partitions, t(0))
    }

    fn start_with(
        store: &mut Store,
        config: EngineConfig,
        partitions: impl IntoIterator<Item = i32>,
        now: DateTime<Utc>,
    ) -> Self {
        let engine = Engine::new(config, PricingTable::default());
        let mut instance = Self {
            driver: Driver::new(engine, store.db.clone()),
            next: HashMap::new(),
            now,
        };
        instance.assign(store, partitions);
        instance
    }

    /// A new assignment, the whole of it, as the rebalance callback hands it over; each input
    /// partition is read from where the claim says.
    fn assign(&mut self, store: &mut Store, partitions: impl IntoIterator<Item = i32>) {
        let partitions: Vec<i32> = partitions.into_iter().collect();
        let starts = self
            .driver
            .assign(&partitions, self.now, &mut Letters(&mut store.dead_letters))
            .expect("claim");
        self.next = starts
            .into_iter()
            .map(|s| ((s.input, s.partition), s.offset.unwrap_or(0)))
            .collect();
    }

    fn revoke(&mut self, store: &mut Store, partitions: &[i32]) {
        self.driver
            .revoke(partitions, self.now, &mut Letters(&mut store.dead_letters));
        self.next.retain(|(_, p), _| !partitions.contains(p));
    }

    /// Consumes one record, chosen by `pick` among the inputs that have one; false at the end.
    fn step(&mut self, topics: &Topics, store: &mut Store, pick: u64) -> bool {
        let mut ready: Vec<(Input, i32)> = self
            .next
            .iter()
            .filter(|(&(input, partition), &offset)| offset < topics.len(input, partition))
            .map(|(&k, _)| k)
            .collect();
        if ready.is_empty() {
            return false;
        }
        ready.sort();
        // Prefer the input whose next record is oldest, as a consumer keeping up would, but
        // let `pick` reorder within a few seconds: the interleaving is never the same twice.
        let time = |k: &(Input, i32)| match topics.get(k.0, k.1, self.next[k]) {
            Event::Request(r) => r.timestamp,
            Event::Response(r) => r.timestamp,
        };
        let oldest = ready.iter().map(time).min().unwrap();
        let close: Vec<_> = ready
            .iter()
            .filter(|k| time(k) <= oldest + TimeDelta::seconds(8))
            .copied()
            .collect();
        let (input, partition) = close[(pick as usize) % close.len()];
        let offset = self.next[&(input, partition)];
        let event = topics.get(input, partition, offset);
        let at = time(&(input, partition));
        self.now = self.now.max(at + TimeDelta::seconds(1));
        self.next.insert((input, partition), offset + 1);
        let source = Source {
            input,
            partition,
            offset,
        };
        let effects = self.driver.apply(source, event, self.now);
        Letters(&mut store.dead_letters).act(effects);
        true
    }

    /// The commit of the poll loop; false when the store refused it.
    fn commit(&mut self, store: &mut Store) -> bool {
        self.driver
            .commit(self.now, &mut Letters(&mut store.dead_letters))
            .is_ok()
    }

    /// Every owned input partition read to its end: silence may follow.
    fn at_end(&mut self) {
        let keys: Vec<(Input, i32)> = self.next.keys().copied().collect();
        for (input, partition) in keys {
            self.driver.reached_end(input, partition);
        }
    }

    /// Runs to the end of the topics, then lets every window close and every TTL pass.
    fn finish(&mut self, topics: &Topics, store: &mut Store, seed: &mut u64) {
        let mut n = 0;
        while self.step(topics, store, next(seed)) {
            n += 1;
            if n % 17 == 0 {
                self.commit(store);
            }
        }
        // Two rounds of statistics and commits, an hour apart: after a flush the store had
        // refused, the first commit writes it and a flush of what closed since, which does
        // not take the silence observed while the store refused for the end of the input.
        for _ in 0..2 {
            self.now += TimeDelta::hours(1);
            self.at_end();
            assert!(self.commit(store), "the last commits are written");
        }
    }
}

fn next(seed: &mut u64) -> u64 {
    // splitmix64
    *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Ten minutes of traffic: pairs, responses first, duplicates, timeouts and orphans.
fn traffic(seed: u64, partitions: i32) -> Topics {
    let mut s = seed;
    let mut topics = Topics::new(partitions);
    let models = ["gpt-4o", "gpt-4o-mini", "in-house"];
    for i in 0..240i64 {
        let id = format!("r{seed}-{i}");
        let at = i * 600 / 240;
        let r = next(&mut s);
        let model = models[(r % 3) as usize];
        let latency = 50 + r % 20_000;
        let answered_at = at + (latency / 1000) as i64;
        match r % 20 {
            0 => topics.produce(request(&id, at, model)), // never answered: a timeout
            1 => topics.produce(response(&id, answered_at, latency, false)), // an orphan
            2 => {
                // delivered twice
                topics.produce(request(&id, at, model));
                topics.produce(request(&id, at, model));
                topics.produce(response(&id, answered_at, latency, false));
                topics.produce(response(&id, answered_at, latency, false));
            }
            _ => {
                topics.produce(request(&id, at, model));
                topics.produce(response(&id, answered_at, latency, r.is_multiple_of(11)));
            }
        }
    }
    // Producers are not in time order across ids; each partition is in produce order.
    topics
}

fn run_clean(topics: &Topics, seed: u64) -> Store {
    let mut store = Store::default();
    let mut s = seed;
    Instance::start(topics, &mut store).finish(topics, &mut store, &mut s);
    store
}

/// Crashes after each number of steps in `crashes` (counted from the previous start),
/// committing every `every` steps in between.
fn run_with_crashes(topics: &Topics, seed: u64, crashes: &[usize], every: usize) -> Store {
    let mut store = Store::default();
    let mut s = seed ^ 0xABCD;
    for &steps in crashes {
        let mut instance = Instance::start(topics, &mut store);
        for n in 1..=steps {
            if !instance.step(topics, &mut store, next(&mut s)) {
                break;
            }
            if n % every == 0 {
                instance.commit(&mut store);
            }
        }
        // kill -9: whatever was not committed is gone.
    }
    Instance::start(topics, &mut store).finish(topics, &mut store, &mut s);
    store
}

fn expected_totals(topics: &Topics) -> (u64, u64, u64) {
    // requests counted = distinct request ids that have a request; timeouts = those without a
    // response; orphans = response ids without a request.
    let mut requests = HashSet::new();
    let mut responses = HashSet::new();
    for ((input, _), events) in &topics.records {
        for e in events {
            match input {
                Input::Requests => requests.insert(e.request_id().to_owned()),
                Input::Responses => responses.insert(e.request_id().to_owned()),
            };
        }
    }
    let timeouts = requests.difference(&responses).count() as u64;
    let orphans = responses.difference(&requests).count() as u64;
    (requests.len() as u64, timeouts, orphans)
}

fn sum(store: &Store) -> (u64, u64) {
    store
        .rows()
        .values()
        .fold((0, 0), |(r, t), a| (r + a.requests, t + a.timeouts))
}

/// Both runs wrote the same rows; the message lists the ones that differ.
fn same_rows(a: &Store, b: &Store) -> Result<(), TestCaseError> {
    let (a, b) = (a.totals(), b.totals());
    let diff: Vec<_> = a
        .iter()
        .filter(|r| !b.contains(r))
        .chain(b.iter().filter(|r| !a.contains(r)))
        .collect();
    prop_assert!(diff.is_empty(), "rows differ: {:#?}", diff);
    Ok(())
}

#[test]
fn every_request_is_counted_once_with_timeouts_and_orphans() {
    let topics = traffic(7, 3);
    let store = run_clean(&topics, 7);
    let (requests, timeouts, orphans) = expected_totals(&topics);
    assert_eq!(sum(&store), (requests, timeouts));
    assert_eq!(store.dead_letters.len() as u64, orphans);
    assert!(timeouts > 0 && orphans > 0, "the traffic exercises both");
}
/// An old backlog read after an idle spell, when the watermark is far ahead: a crash after
/// a commit that holds a request but not yet its response must not lose the call on replay.
#[test]
fn a_half_read_behind_the_watermark_is_not_taken_for_settled_after_a_restart() {
    let mut store = Store::default();
    let mut instance = Instance::start_on(&mut store, [0]);
    let apply = |instance: &mut Instance, source: Source, event: Event, now: i64| {
        instance.now = t(now);
        instance.driver.apply(source, event, t(now))
    };
    // Pair "a" at 10 s, then both partitions read to their end and a long silence.
    apply(
        &mut instance,
        src(Input::Requests, 0),
        request("a", 10, "gpt-4o"),
        11,
    );
    apply(
        &mut instance,
        src(Input::Responses, 0),
        response("a", 11, 100, false),
        12,
    );
    instance.at_end();
    instance.now = t(1000);
    assert!(instance.commit(&mut store));
    // The backlog: a request stamped long ago; its response is not read before the crash.
    apply(
        &mut instance,
        src(Input::Requests, 1),
        request("b", 200, "gpt-4o"),
        1001,
    );
    assert!(instance.commit(&mut store));
    assert_eq!(store.db.waiting(), 1, "the commit says b is still waiting");
    // kill -9, and a new instance resumes from the store.
    let mut instance = Instance::start_with(&mut store, config(), [0], t(1010));
    assert_eq!(instance.next[&(Input::Requests, 0)], 1, "b is replayed");
    apply(
        &mut instance,
        src(Input::Requests, 1),
        request("b", 200, "gpt-4o"),
        1010,
    );
    let effects = apply(
        &mut instance,
        src(Input::Responses, 1),
        response("b", 201, 500, false),
        1011,
    );
    assert!(effects.is_empty(), "{effects:?}");
    instance.at_end();
    instance.now = t(2000);
    assert!(instance.commit(&mut store));
    let (requests, completed, timeouts) = store.rows().values().fold((0, 0, 0), |s, row| {
        (s.0 + row.requests, s.1 + row.completed, s.2 + row.timeouts)
    });
    assert_eq!((requests, completed, timeouts), (2, 2, 0));
}

impl Instance {
    /// Up to `steps` steps (fewer when the input ends), committing every `every` steps.
    fn run_alone(
        &mut self,
        topics: &Topics,
        store: &mut Store,
        seed: &mut u64,
        steps: usize,
        every: usize,
    ) {
        for n in 1..=steps {
            if !self.step(topics, store, next(seed)) {
                break;
            }
            if n % every == 0 {
                self.commit(store);
            }
        }
    }
}

/// Two instances stepping in turns, committing every `every` steps, until both have read
/// everything; then each commits its last windows.
fn run_both_to_the_end(
    instances: [&mut Instance; 2],
    topics: &Topics,
    store: &mut Store,
    seed: &mut u64,
    every: usize,
) {
    let [a, b] = instances;
    let mut n = 0;
    loop {
        let more_a = a.step(topics, store, next(seed));
        let more_b = b.step(topics, store, next(seed));
        n += 1;
        if n % every == 0 {
            a.commit(store);
            b.commit(store);
        }
        if !more_a && !more_b {
            break;
        }
    }
    for instance in [a, b] {
        instance.at_end();
        instance.now += TimeDelta::hours(1);
        assert!(instance.commit(store));
    }
}

/// Two instances in one group: the first owns everything, then gives a partition to a second
/// (committing before it lets go, as the rebalance callback does); both run to the end.
fn run_with_rebalance(topics: &Topics, seed: u64, handover: usize, every: usize) -> Store {
    let mut store = Store::default();
    let mut s = seed ^ 0x5EED;
    let mut a = Instance::start(topics, &mut store);
    a.run_alone(topics, &mut store, &mut s, handover, every);
    a.revoke(&mut store, &[1]);
    let mut b = Instance::start_on(&mut store, [1]);
    run_both_to_the_end([&mut a, &mut b], topics, &mut store, &mut s, every);
    store
}

/// Two instances: the first owns everything and freezes after `handover` steps; meanwhile the
/// second claims partition 1 and reads it. The first wakes up, still reading partition 1,
/// until a commit is refused for it (its epoch moved on): it drops that partition, from the
/// flush too, and writes the rest.
fn run_with_takeover(topics: &Topics, seed: u64, handover: usize, every: usize) -> Store {
    let mut store = Store::default();
    let mut s = seed ^ 0x7A4E;
    let mut a = Instance::start(topics, &mut store);
    a.run_alone(topics, &mut store, &mut s, handover, every);
    let mut b = Instance::start_on(&mut store, [1]);
    run_both_to_the_end([&mut a, &mut b], topics, &mut store, &mut s, every);
    assert!(
        !a.driver.engine().owns(1),
        "the stale instance let partition 1 go"
    );
    store
}

/// What can happen to one instance between two runs of records, besides reading them.
#[derive(Debug, Clone, Copy)]
enum Turn {
    Commit,
    /// Postgres refuses the commit: the flush is kept and retried.
    Refused,
    /// The commit goes through but its answer is lost: the retry finds it written.
    AnswerLost,
    /// kill -9, and a new instance takes over from the store.
    Crash,
    /// A rebalance: everything revoked (committing first), then assigned again.
    Rebalance,
    /// A rebalance whose commit before letting go is refused.
    RevokeRefused,
    /// The same partitions assigned again without a revocation first, as a coordinator that
    /// lost track of a generation does.
    Reassigned,
}

fn turns() -> impl Strategy<Value = Vec<(usize, Turn)>> {
    let turn = prop_oneof![
        4 => Just(Turn::Commit),
        2 => Just(Turn::Refused),
        2 => Just(Turn::AnswerLost),
        1 => Just(Turn::Crash),
        1 => Just(Turn::Rebalance),
        1 => Just(Turn::RevokeRefused),
        2 => Just(Turn::Reassigned),
    ];
    prop::collection::vec((1usize..60, turn), 1..24)
}

/// One instance (and its successors after crashes) through `turns`, each after its number
/// of records.
fn run_with_turns(topics: &Topics, seed: u64, turns: &[(usize, Turn)]) -> Store {
    let mut store = Store::default();
    let mut s = seed ^ 0x7EA5;
    let all: Vec<i32> = (0..topics.partitions).collect();
    let mut instance = Instance::start(topics, &mut store);
    for &(steps, turn) in turns {
        for _ in 0..steps {
            instance.step(topics, &mut store, next(&mut s));
        }
        match turn {
            Turn::Commit => {
                instance.commit(&mut store);
            }
            Turn::Refused | Turn::AnswerLost => {
                let fault = match turn {
                    Turn::Refused => Fault::Refuse,
                    _ => Fault::LoseAnswer,
                };
                store.db.inject(fault);
                assert!(!instance.commit(&mut store), "the fault is seen");
            }
            Turn::Crash => instance = Instance::start(topics, &mut store),
            Turn::Rebalance | Turn::RevokeRefused => {
                if let Turn::RevokeRefused = turn {
                    store.db.inject(Fault::Refuse);
                }
                instance.revoke(&mut store, &all);
                instance.assign(&mut store, all.clone());
            }
            Turn::Reassigned => instance.assign(&mut store, all.clone()),
        }
    }
    instance.finish(topics, &mut store, &mut s);
    store
}

/// A flush Postgres refused is kept for a retry. If the same partitions are assigned to its
/// instance again before it is written, with no revocation first, another instance may have
/// owned and written them in between: the kept flush must then be refused by the fencing, not
/// written under the new claim, where it would count what the other one wrote again.
#[test]
fn a_flush_kept_across_a_reassignment_is_not_written_under_the_new_claim() {
    let topics = traffic(5, 2);
    let clean = run_clean(&topics, 5);
    let mut store = Store::default();
    let mut s = 5;
    let mut a = Instance::start(&topics, &mut store);
    for _ in 0..300 {
        a.step(&topics, &mut store, next(&mut s));
    }
    store.db.inject(Fault::Refuse);
    assert!(!a.commit(&mut store), "the flush is kept");
    // Meanwhile the group gave everything to b, which reads it all and writes it.
    Instance::start(&topics, &mut store).finish(&topics, &mut store, &mut s);
    // a is handed the partitions back without having been told it lost them.
    a.assign(&mut store, 0..topics.partitions);
    a.finish(&topics, &mut store, &mut s);
    if let Err(e) = same_rows(&clean, &store) {
        panic!("{e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any interleaving of the same records gives the same windows.
    #[test]
    fn the_arrival_order_does_not_change_the_numbers(seed in 0u64..1_000, order in 0u64..1_000) {
        let topics = traffic(seed, 2);
        let a = run_clean(&topics, order);
        let b = run_clean(&topics, order.wrapping_mul(31).wrapping_add(1));
        prop_assert_eq!(a.totals(), b.totals());
        prop_assert_eq!(a.dead_letters, b.dead_letters);
    }

    /// Crashes at any points, with commits in between, give exactly the numbers of a run
    /// without crashes: no event lost, none counted twice.
    #[test]
    fn crashes_and_replays_change_nothing(
        seed in 0u64..1_000,
        crashes in prop::collection::vec(1usize..400, 1..5),
        every in 1usize..40,
    ) {
        let topics = traffic(seed, 2);
        let clean = run_clean(&topics, seed);
        let crashed = run_with_crashes(&topics, seed, &crashes, every);
        same_rows(&clean, &crashed)?;
        prop_assert_eq!(&clean.dead_letters, &crashed.dead_letters);
        let (requests, timeouts, _) = expected_totals(&topics);
        prop_assert_eq!(sum(&crashed), (requests, timeouts));
    }

    /// Handing a partition to a second instance mid-run gives the numbers of one instance.
    #[test]
    fn a_rebalance_changes_nothing(seed in 0u64..1_000, handover in 1usize..400, every in 1usize..40) {
        let topics = traffic(seed, 2);
        let single = run_clean(&topics, seed);
        let shared = run_with_rebalance(&topics, seed, handover, every);
        same_rows(&single, &shared)?;
        prop_assert_eq!(&single.dead_letters, &shared.dead_letters);
    }

    /// Store faults, crashes and rebalances of every kind, in any order, give the numbers of
    /// a run without them.
    #[test]
    fn store_faults_and_rebalances_change_nothing(seed in 0u64..1_000, turns in turns()) {
        let topics = traffic(seed, 2);
        let clean = run_clean(&topics, seed);
        let faulty = run_with_turns(&topics, seed, &turns);
        same_rows(&clean, &faulty)?;
        prop_assert_eq!(&clean.dead_letters, &faulty.dead_letters);
    }

    /// An instance that lost a partition while frozen writes everything else it closed.
    #[test]
    fn a_stale_instance_loses_only_the_partition_taken_from_it(
        seed in 0u64..1_000, handover in 1usize..400, every in 1usize..40,
    ) {
        let topics = traffic(seed, 3);
        let single = run_clean(&topics, seed);
        let taken = run_with_takeover(&topics, seed, handover, every);
        same_rows(&single, &taken)?;
        let (requests, timeouts, _) = expected_totals(&topics);
        prop_assert_eq!(sum(&taken), (requests, timeouts));
    }
}

mod live;
mod restore;
