//! The engine against a simulated broker and store: records in partitions, commits that
//! write windows, decisions and positions together, crashes that lose everything else.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use common::events::{Event, RequestEvent, ResponseEvent};
use proptest::prelude::*;

use super::*;

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_699_999_980 + s, 0).unwrap()
}

fn config() -> EngineConfig {
    EngineConfig {
        ttl: TimeDelta::seconds(70),
        grace: TimeDelta::seconds(2),
        idle_after: TimeDelta::seconds(3),
        tenant_scoped: false,
    }
}

fn request(id: &str, at: i64, model: &str) -> Event {
    Event::Request(RequestEvent {
        request_id: id.into(),
        tenant_id: "acme".into(),
        route: "/chat".into(),
        model: model.into(),
        timestamp: t(at),
        prompt_tokens: 100,
        user_id_hash: None,
        metadata: None,
    })
}

fn response(id: &str, at: i64, latency_ms: u64, error: bool) -> Event {
    Event::Response(ResponseEvent {
        request_id: id.into(),
        timestamp: t(at),
        latency_ms,
        completion_tokens: 10 + latency_ms % 7,
        finish_reason: "stop".into(),
        error: error.then(|| "upstream 500".into()),
        time_to_first_token_ms: latency_ms.is_multiple_of(3).then_some(latency_ms / 3),
        cached_prompt_tokens: Some(latency_ms % 50),
        tenant_id: None,
    })
}

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
        let partition =
            common::kafka::partition_for(event.request_id().as_bytes(), self.partitions);
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

/// What the database holds.
#[derive(Debug, Clone, Default)]
struct Store {
    rows: HashMap<WindowKey, Aggregate>,
    decisions: Vec<Decision>,
    positions: HashMap<(Input, i32), (Committed, i64)>,
    waiting: HashSet<Source>,
    dead_letters: HashSet<String>,
}

impl Store {
    fn commit(&mut self, flush: &Flush) {
        for (key, aggregate) in &flush.windows() {
            self.rows.entry(key.clone()).or_default().merge(aggregate);
        }
        self.decisions.extend(flush.decisions.iter().cloned());
        for p in &flush.positions {
            self.waiting
                .retain(|w| (w.input, w.partition) != (p.input, p.partition));
        }
        self.waiting.extend(flush.waiting.iter().map(|w| w.source));
        for p in &flush.positions {
            let committed = Committed {
                position: p.consumed,
                watermark: p.watermark,
            };
            self.positions
                .insert((p.input, p.partition), (committed, p.resume));
        }
        // Decisions about records no replay will reach again are not needed any more.
        let positions = &self.positions;
        self.decisions.retain(|d| {
            positions
                .get(&(d.source.input, d.source.partition))
                .is_none_or(|(_, resume)| d.source.offset >= *resume)
        });
    }

    /// An engine owning `partitions` as a new instance takes them over from what is stored,
    /// and the offset each input partition is read from.
    fn engine_on(
        &self,
        config: EngineConfig,
        partitions: impl IntoIterator<Item = i32>,
        now: DateTime<Utc>,
    ) -> (Engine, HashMap<(Input, i32), i64>) {
        let mut engine = Engine::new(config, PricingTable::default());
        let mut next = HashMap::new();
        for partition in partitions {
            let stored = [Input::Requests, Input::Responses].map(|input| {
                let s = self.positions.get(&(input, partition)).copied();
                next.insert((input, partition), s.map_or(0, |(_, resume)| resume));
                (input, s)
            });
            let decisions = self
                .decisions
                .iter()
                .filter(|d| d.source.partition == partition)
                .cloned()
                .collect();
            engine.assign(partition, stored, decisions, now);
            engine.still_waiting(partition, self.waiting_in(partition));
        }
        (engine, next)
    }

    fn waiting_in(&self, partition: i32) -> Vec<Source> {
        self.waiting
            .iter()
            .filter(|w| w.partition == partition)
            .copied()
            .collect()
    }

    /// Totals by key, for comparing runs: every sum and count, and the histograms' contents.
    fn totals(&self) -> Vec<String> {
        let mut rows: Vec<String> = self
            .rows
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

/// A processor instance: an engine plus the read positions of its consumer.
struct Instance {
    engine: Engine,
    next: HashMap<(Input, i32), i64>,
    now: DateTime<Utc>,
}

impl Instance {
    /// Starts on every partition, resuming where the store says.
    fn start(topics: &Topics, store: &Store) -> Self {
        Self::start_on(store, 0..topics.partitions)
    }

    fn start_on(store: &Store, partitions: impl IntoIterator<Item = i32>) -> Self {
        let (engine, next) = store.engine_on(config(), partitions, t(0));
        Self {
            engine,
            next,
            now: t(0),
        }
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
        let effects = self.engine.apply(
            Source {
                input,
                partition,
                offset,
            },
            event,
            self.now,
        );
        self.record(store, effects);
        true
    }

    fn record(&mut self, store: &mut Store, effects: Vec<Effect>) {
        for effect in effects {
            if let Effect::DeadLetter { key, .. } = effect {
                store.dead_letters.insert(key);
            }
        }
    }

    fn commit(&mut self, store: &mut Store) {
        let (flush, effects) = self.engine.flush(self.now);
        self.record(store, effects);
        store.commit(&flush);
        self.engine.committed(&flush);
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
        for &(input, partition) in self.next.keys() {
            self.engine.reached_end(input, partition);
        }
        self.now += TimeDelta::hours(1);
        self.commit(store);
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
    Instance::start(topics, &store).finish(topics, &mut store, &mut s);
    store
}

/// Crashes after each number of steps in `crashes` (counted from the previous start),
/// committing every `every` steps in between.
fn run_with_crashes(topics: &Topics, seed: u64, crashes: &[usize], every: usize) -> Store {
    let mut store = Store::default();
    let mut s = seed ^ 0xABCD;
    for &steps in crashes {
        let mut instance = Instance::start(topics, &store);
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
    Instance::start(topics, &store).finish(topics, &mut store, &mut s);
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
        .rows
        .values()
        .fold((0, 0), |(r, t), a| (r + a.requests, t + a.timeouts))
}

/// An engine owning partition 0 with nothing stored.
fn fresh_engine() -> Engine {
    let mut engine = Engine::new(config(), PricingTable::default());
    engine.assign(
        0,
        [(Input::Requests, None), (Input::Responses, None)],
        Vec::new(),
        t(0),
    );
    engine
}

/// A record of partition 0.
fn src(input: Input, offset: i64) -> Source {
    Source {
        input,
        partition: 0,
        offset,
    }
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

fn stamped(event: Event, tenant: &str) -> Event {
    match event {
        Event::Response(mut r) => {
            r.tenant_id = Some(tenant.into());
            Event::Response(r)
        }
        other => other,
    }
}

/// Another tenant posting a response for a request id of `acme`, before and after acme's own:
/// acme's window holds its own call only, and the stranger's response ends as an orphan.
#[test]
fn with_tenant_scoped_joins_another_tenants_response_pairs_with_nothing() {
    let mut engine = Engine::new(
        EngineConfig {
            tenant_scoped: true,
            ..config()
        },
        PricingTable::default(),
    );
    engine.assign(
        0,
        [(Input::Requests, None), (Input::Responses, None)],
        Vec::new(),
        t(0),
    );
    let mut effects = Vec::new();
    // "a": the stranger's response comes first, then acme's request and response.
    effects.extend(engine.apply(
        src(Input::Responses, 0),
        stamped(response("a", 2, 9_000, true), "mallory"),
        t(3),
    ));
    effects.extend(engine.apply(src(Input::Requests, 0), request("a", 1, "gpt-4o"), t(3)));
    effects.extend(engine.apply(
        src(Input::Responses, 1),
        stamped(response("a", 2, 120, false), "acme"),
        t(3),
    ));
    // "b": acme's request, then the stranger's response; acme's own never comes.
    effects.extend(engine.apply(src(Input::Requests, 1), request("b", 1, "gpt-4o"), t(3)));
    effects.extend(engine.apply(
        src(Input::Responses, 2),
        stamped(response("b", 2, 9_000, true), "mallory"),
        t(3),
    ));
    // A response without a tenant pairs with nothing either.
    effects.extend(engine.apply(src(Input::Requests, 2), request("c", 1, "gpt-4o"), t(3)));
    effects.extend(engine.apply(src(Input::Responses, 3), response("c", 2, 50, false), t(3)));
    engine.reached_end(Input::Requests, 0);
    engine.reached_end(Input::Responses, 0);
    effects.extend(engine.tick(t(3600)));
    let (flush, more) = engine.flush(t(3600));
    effects.extend(more);
    assert_eq!(flush.windows().len(), 1);
    let row = &flush.windows()[0].1;
    assert_eq!(flush.windows()[0].0.tenant.as_ref(), "acme");
    assert_eq!(
        (row.requests, row.completed, row.timeouts, row.errors),
        (3, 1, 2, 0)
    );
    assert_eq!(row.latency_sum_ms, 120);
    let orphans: Vec<&str> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::DeadLetter { key, .. } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(orphans.len(), 3, "{effects:?}");
    assert!(
        orphans.iter().all(|k| ["a", "b", "c"].contains(k)),
        "dead letters carry the id as sent: {orphans:?}"
    );
}

#[test]
fn without_tenant_scope_halves_pair_by_request_id_alone() {
    let mut engine = fresh_engine();
    engine.apply(src(Input::Requests, 0), request("a", 1, "gpt-4o"), t(3));
    engine.apply(
        src(Input::Responses, 0),
        stamped(response("a", 2, 120, false), "someone"),
        t(3),
    );
    engine.reached_end(Input::Requests, 0);
    engine.reached_end(Input::Responses, 0);
    let (flush, _) = engine.flush(t(3600));
    assert_eq!(flush.windows()[0].1.completed, 1);
}

#[test]
fn a_response_before_its_request_is_paired() {
    let mut engine = fresh_engine();
    assert!(engine
        .apply(src(Input::Responses, 0), response("a", 2, 120, false), t(3))
        .is_empty());
    assert!(engine
        .apply(src(Input::Requests, 0), request("a", 1, "gpt-4o"), t(3))
        .is_empty());
    engine.reached_end(Input::Requests, 0);
    engine.reached_end(Input::Responses, 0);
    let (flush, _) = engine.flush(t(3600));
    assert_eq!(flush.windows().len(), 1);
    let row = &flush.windows()[0].1;
    assert_eq!((row.requests, row.completed, row.timeouts), (1, 1, 0));
}

#[test]
fn nothing_is_written_before_its_window_closes_and_positions_hold_what_is_pending() {
    let mut engine = fresh_engine();
    engine.apply(src(Input::Requests, 0), request("a", 10, "gpt-4o"), t(11));
    engine.apply(src(Input::Requests, 1), request("b", 20, "gpt-4o"), t(21));
    engine.apply(
        src(Input::Responses, 0),
        response("b", 21, 300, false),
        t(22),
    );
    let (flush, _) = engine.flush(t(22));
    assert!(flush.windows().is_empty());
    let requests = flush
        .positions
        .iter()
        .find(|p| p.input == Input::Requests)
        .unwrap();
    assert_eq!(
        (requests.consumed, requests.resume),
        (2, 0),
        "request a is still pending"
    );
}

#[test]
fn a_late_pair_is_handed_out_as_a_partial_for_its_closed_window() {
    let mut engine = fresh_engine();
    engine.apply(src(Input::Requests, 0), request("a", 10, "gpt-4o"), t(11));
    engine.apply(
        src(Input::Responses, 0),
        response("a", 11, 100, false),
        t(12),
    );
    engine.apply(src(Input::Requests, 1), request("b", 70, "gpt-4o"), t(71));
    engine.apply(
        src(Input::Responses, 1),
        response("z", 70, 100, false),
        t(71),
    );
    let (first, _) = engine.flush(t(71));
    assert_eq!(
        first.windows().len(),
        1,
        "the first minute closed at watermark 70"
    );
    // Request c belongs to the first minute but arrives now, with its response.
    engine.apply(src(Input::Requests, 2), request("c", 15, "gpt-4o"), t(72));
    let effects = engine.apply(
        src(Input::Responses, 2),
        response("c", 16, 100, false),
        t(72),
    );
    assert_eq!(effects, vec![Effect::Late]);
    let (second, _) = engine.flush(t(72));
    assert_eq!(second.windows().len(), 1);
    assert_eq!(second.windows()[0].0, first.windows()[0].0);
    assert_eq!(
        second.windows()[0].1.requests,
        1,
        "a partial to add, not the whole window"
    );
}

/// Pair "a" at 10 s, then both partitions read to their end: an idle spell may follow.
fn a_pair_then_silence(engine: &mut Engine) {
    engine.apply(src(Input::Requests, 0), request("a", 10, "gpt-4o"), t(11));
    engine.apply(
        src(Input::Responses, 0),
        response("a", 11, 100, false),
        t(12),
    );
    engine.reached_end(Input::Requests, 0);
    engine.reached_end(Input::Responses, 0);
}

#[test]
fn old_pairs_read_after_an_idle_spell_are_paired_not_timed_out() {
    let mut engine = fresh_engine();
    a_pair_then_silence(&mut engine);
    // Idle for a long while: the clock leads the watermark, far past what follows.
    let (first, _) = engine.flush(t(1000));
    assert_eq!(first.windows().len(), 1);
    // A backlog of pairs stamped long ago (a client flushing what it buffered), of which
    // the requests topic is read first. Commits happen in between, as every second.
    for (n, at) in [(1, 200), (2, 210), (3, 220)] {
        let effects = engine.apply(
            src(Input::Requests, n),
            request(&format!("b{n}"), at, "gpt-4o"),
            t(1000 + n),
        );
        assert!(effects.is_empty(), "{effects:?}");
        let (_, effects) = engine.flush(t(1000 + n));
        assert!(
            effects.is_empty(),
            "no request times out before its response is read: {effects:?}"
        );
    }
    for (n, at) in [(1, 201), (2, 211), (3, 221)] {
        engine.apply(
            src(Input::Responses, n),
            response(&format!("b{n}"), at, 500, false),
            t(1010),
        );
    }
    engine.reached_end(Input::Requests, 0);
    engine.reached_end(Input::Responses, 0);
    let (flush, _) = engine.flush(t(2000));
    let (requests, completed, timeouts) = flush.windows().iter().fold((0, 0, 0), |s, (_, row)| {
        (s.0 + row.requests, s.1 + row.completed, s.2 + row.timeouts)
    });
    assert_eq!((requests, completed, timeouts), (3, 3, 0));
}

/// An old backlog read after an idle spell, when the watermark is far ahead: a crash after
/// a commit that holds a request but not yet its response must not lose the call on replay.
#[test]
fn a_half_read_behind_the_watermark_is_not_taken_for_settled_after_a_restart() {
    let mut store = Store::default();
    let mut engine = fresh_engine();
    let commit = |engine: &mut Engine, store: &mut Store, now: i64| {
        let (flush, _) = engine.flush(t(now));
        store.commit(&flush);
        engine.committed(&flush);
    };
    a_pair_then_silence(&mut engine);
    commit(&mut engine, &mut store, 1000);
    // The backlog: a request stamped long ago; its response is not read before the crash.
    engine.apply(
        src(Input::Requests, 1),
        request("b", 200, "gpt-4o"),
        t(1001),
    );
    commit(&mut engine, &mut store, 1001);
    assert_eq!(store.waiting.len(), 1, "the commit says b is still waiting");
    // kill -9, and a new instance resumes from the store.
    let (mut engine, _) = store.engine_on(config(), [0], t(1010));
    let resume = store.positions[&(Input::Requests, 0)].1;
    assert_eq!(resume, 1, "b is replayed");
    engine.apply(
        src(Input::Requests, 1),
        request("b", 200, "gpt-4o"),
        t(1010),
    );
    let effects = engine.apply(
        src(Input::Responses, 1),
        response("b", 201, 500, false),
        t(1011),
    );
    assert!(effects.is_empty(), "{effects:?}");
    engine.reached_end(Input::Requests, 0);
    engine.reached_end(Input::Responses, 0);
    commit(&mut engine, &mut store, 2000);
    let (requests, completed, timeouts) = store.rows.values().fold((0, 0, 0), |s, row| {
        (s.0 + row.requests, s.1 + row.completed, s.2 + row.timeouts)
    });
    assert_eq!((requests, completed, timeouts), (2, 2, 0));
}

/// Two instances in one group: the first owns everything, then gives a partition to a second
/// (committing before it lets go, as the rebalance callback does); both run to the end.
fn run_with_rebalance(topics: &Topics, seed: u64, handover: usize, every: usize) -> Store {
    let mut store = Store::default();
    let mut s = seed ^ 0x5EED;
    let mut a = Instance::start(topics, &store);
    for n in 1..=handover {
        if !a.step(topics, &mut store, next(&mut s)) {
            break;
        }
        if n % every == 0 {
            a.commit(&mut store);
        }
    }
    a.commit(&mut store);
    a.engine.revoke(1);
    a.next.retain(|(_, partition), _| *partition != 1);
    let mut b = Instance::start_on(&store, [1]);
    let mut n = 0;
    loop {
        let more_a = a.step(topics, &mut store, next(&mut s));
        let more_b = b.step(topics, &mut store, next(&mut s));
        n += 1;
        if n % every == 0 {
            a.commit(&mut store);
            b.commit(&mut store);
        }
        if !more_a && !more_b {
            break;
        }
    }
    for instance in [&mut a, &mut b] {
        for partition in 0..topics.partitions {
            instance.engine.reached_end(Input::Requests, partition);
            instance.engine.reached_end(Input::Responses, partition);
        }
        instance.now += TimeDelta::hours(1);
        instance.commit(&mut store);
    }
    store
}

/// The commit of an instance that may have lost partitions without being told, as a frozen
/// one does: the store refuses a flush that writes a partition claimed since (`owner` says who
/// claimed each last); the instance then drops that partition, from the flush too, and writes
/// the rest, as the shell does.
fn commit_fenced(instance: &mut Instance, me: u8, owner: &HashMap<i32, u8>, store: &mut Store) {
    let (mut flush, effects) = instance.engine.flush(instance.now);
    instance.record(store, effects);
    while let Some(lost) = flush
        .positions
        .iter()
        .map(|p| p.partition)
        .find(|p| owner.get(p) != Some(&me))
    {
        flush.drop_partition(lost);
        instance.engine.revoke(lost);
        instance.next.retain(|(_, partition), _| *partition != lost);
    }
    store.commit(&flush);
    instance.engine.committed(&flush);
}

/// Two instances: the first owns everything and freezes after `handover` steps; meanwhile the
/// second claims partition 1 and reads it. The first wakes up, still reading partition 1,
/// until a commit is refused for it.
fn run_with_takeover(topics: &Topics, seed: u64, handover: usize, every: usize) -> Store {
    let mut store = Store::default();
    let mut s = seed ^ 0x7A4E;
    let mut owner: HashMap<i32, u8> = (0..topics.partitions).map(|p| (p, 0)).collect();
    let mut a = Instance::start(topics, &store);
    for n in 1..=handover {
        if !a.step(topics, &mut store, next(&mut s)) {
            break;
        }
        if n % every == 0 {
            commit_fenced(&mut a, 0, &owner, &mut store);
        }
    }
    owner.insert(1, 1);
    let mut b = Instance::start_on(&store, [1]);
    let mut n = 0;
    loop {
        let more_a = a.step(topics, &mut store, next(&mut s));
        let more_b = b.step(topics, &mut store, next(&mut s));
        n += 1;
        if n % every == 0 {
            commit_fenced(&mut a, 0, &owner, &mut store);
            commit_fenced(&mut b, 1, &owner, &mut store);
        }
        if !more_a && !more_b {
            break;
        }
    }
    for (instance, me) in [(&mut a, 0), (&mut b, 1)] {
        for partition in 0..topics.partitions {
            instance.engine.reached_end(Input::Requests, partition);
            instance.engine.reached_end(Input::Responses, partition);
        }
        instance.now += TimeDelta::hours(1);
        commit_fenced(instance, me, &owner, &mut store);
    }
    store
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
