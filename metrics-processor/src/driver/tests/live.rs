//! The driver in real time: records become readable when they are produced, the clock runs
//! on while an instance is down or Postgres refuses commits, and the consumer statistics say
//! when a partition has been read to its end. The faults of `make chaos` (kill -9 and restart,
//! Postgres stopped) at random moments must not change a single number.

use super::*;
use crate::driver::memory::Fault as StoreFault;

const MS: fn(i64) -> TimeDelta = TimeDelta::milliseconds;

fn live_config() -> EngineConfig {
    // As in `scripts/chaos.sh`: a 90 s TTL, late pairs stamped 66 to 80 s back.
    EngineConfig {
        ttl: TimeDelta::seconds(90),
        ..config()
    }
}

/// A record and the moment it was produced.
type Produced = (DateTime<Utc>, Event);

/// Records by input partition, each in produce order.
#[derive(Debug, Clone, Default)]
struct Log {
    partitions: i32,
    records: HashMap<(Input, i32), Vec<Produced>>,
}

impl Log {
    /// Calls every 400 ms for `minutes`, as the oracle stream makes them: live pairs (the
    /// response produced when it returns), responses first, client retries, late pairs posted
    /// whole, failures, unanswered requests and a few stray responses.
    fn traffic(seed: u64, partitions: i32, minutes: i64) -> Self {
        let mut s = seed;
        let mut produced: Vec<Produced> = Vec::new();
        let models = ["gpt-4o", "gpt-4o-mini"];
        for i in 0..minutes * 150 {
            let id = format!("l{seed}-{i}");
            let now = t(0) + MS(400 * i);
            let r = next(&mut s);
            let model = models[(r % 2) as usize];
            let latency = 20 + (r >> 8) % 6_000;
            let late = (r >> 24) % 100 < 5;
            let at = if late {
                now - TimeDelta::seconds(66 + ((r >> 32) % 15) as i64)
            } else {
                now
            };
            let answered = at + MS(latency as i64);
            let req = request(&id, 0, model);
            let req = match req {
                Event::Request(mut q) => {
                    q.timestamp = at;
                    Event::Request(q)
                }
                other => other,
            };
            let resp = match response(&id, 0, latency, (r >> 40).is_multiple_of(25)) {
                Event::Response(mut p) => {
                    p.timestamp = answered;
                    Event::Response(p)
                }
                other => other,
            };
            let post = |when: DateTime<Utc>| if late { now } else { when };
            match (r >> 48) % 100 {
                0..=2 => produced.push((post(at), req)),
                3 => produced.push((post(answered), resp)),
                4..=8 => {
                    // The response first: the request reaches the API a moment later.
                    produced.push((post(answered), resp));
                    produced.push((post(answered) + MS(300), req));
                }
                9..=13 => {
                    let again = MS(1_000 + (r % 1_000) as i64);
                    produced.push((post(at), req.clone()));
                    produced.push((post(answered), resp.clone()));
                    produced.push((post(answered) + again, req));
                    produced.push((post(answered) + again, resp));
                }
                _ => {
                    produced.push((post(at), req));
                    produced.push((post(answered), resp));
                }
            }
        }
        produced.sort_by_key(|(at, _)| *at);
        let mut log = Self {
            partitions,
            records: HashMap::new(),
        };
        for (at, event) in produced {
            let partition = infra::kafka::partition_for(event.request_id().as_bytes(), partitions);
            let input = match event {
                Event::Request(_) => Input::Requests,
                Event::Response(_) => Input::Responses,
            };
            log.records
                .entry((input, partition))
                .or_default()
                .push((at, event));
        }
        log
    }

    /// How many records of an input partition exist at `now`.
    fn available(&self, key: (Input, i32), now: DateTime<Utc>) -> i64 {
        self.records
            .get(&key)
            .map_or(0, |r| r.partition_point(|(at, _)| *at <= now) as i64)
    }

    fn topics(&self) -> Topics {
        let mut topics = Topics::new(self.partitions);
        for (&key, records) in &self.records {
            topics
                .records
                .insert(key, records.iter().map(|(_, e)| e.clone()).collect());
        }
        topics
    }
}

/// What happens to the processor, in order.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// kill -9 at this second; it is restarted `down` seconds later.
    Kill { at: i64, down: i64 },
    /// Postgres refuses every commit from this second for `secs` seconds.
    Postgres { at: i64, secs: i64 },
    /// SIGSTOP at this second, SIGCONT `secs` seconds later.
    Freeze { at: i64, secs: i64 },
    /// A second instance joins at this second and takes partition 1 on; `secs` seconds later
    /// the first leaves and the second takes everything.
    Scale { at: i64, secs: i64 },
    /// kill -9 at this second, restarted `down` seconds later; the coordinator still counts
    /// the dead member and hands the new one partition 0 only (Tansu 0.6 does). `unread`
    /// seconds later the watchdog sees partition 1 unread: the instance leaves the group,
    /// waits out a session, and is then assigned everything.
    Ghost { at: i64, down: i64, unread: i64 },
}

struct Live {
    driver: Driver<MemoryStore>,
    next: HashMap<(Input, i32), i64>,
    /// The end of each input partition as the last fetch response told it: the statistics
    /// know no better while reading is paused or the process is frozen.
    fetched_end: HashMap<(Input, i32), i64>,
    paused: bool,
    /// After a pause, the first fetch takes a moment to come back.
    fetching_from: DateTime<Utc>,
}

impl Live {
    fn start(log: &Log, store: &mut Store, now: DateTime<Utc>) -> Self {
        Self::start_on(store, now, 0..log.partitions)
    }

    fn start_on(
        store: &mut Store,
        now: DateTime<Utc>,
        partitions: impl IntoIterator<Item = i32>,
    ) -> Self {
        let engine = Engine::new(live_config(), PricingTable::default());
        let mut live = Self {
            driver: Driver::new(engine, store.db.clone()),
            fetched_end: HashMap::new(),
            next: HashMap::new(),
            paused: false,
            fetching_from: now,
        };
        live.assign(store, now, partitions, true);
        live
    }

    /// A new assignment, the whole of it: what is held is let go first (committing, unless
    /// Postgres is down), then the new partitions are read from where the claim says.
    fn assign(
        &mut self,
        store: &mut Store,
        now: DateTime<Utc>,
        partitions: impl IntoIterator<Item = i32>,
        postgres_up: bool,
    ) {
        if !postgres_up && !self.driver.engine().owned().is_empty() {
            store.db.inject(StoreFault::Refuse);
        }
        let partitions: Vec<i32> = partitions.into_iter().collect();
        let starts = self
            .driver
            .assign(&partitions, now, &mut Letters(&mut store.dead_letters))
            .expect("claim");
        self.next = starts
            .into_iter()
            .map(|s| ((s.input, s.partition), s.offset.unwrap_or(0)))
            .collect();
        self.fetched_end = self.next.clone();
    }

    /// One fetch: a run of up to 40 records from one input partition that has some, as the
    /// consumer hands out one fetched batch after another.
    fn fetch(&mut self, log: &Log, store: &mut Store, now: DateTime<Utc>, seed: &mut u64) -> bool {
        for (&key, end) in &mut self.fetched_end {
            *end = log.available(key, now);
        }
        let mut ready: Vec<(Input, i32)> = self
            .next
            .iter()
            .filter(|(&k, &offset)| offset < log.available(k, now))
            .map(|(&k, _)| k)
            .collect();
        if ready.is_empty() {
            return false;
        }
        ready.sort();
        let key = ready[(next(seed) as usize) % ready.len()];
        let run = 1 + next(seed) % 40;
        for _ in 0..run {
            let offset = self.next[&key];
            if offset >= log.available(key, now) {
                break;
            }
            let event = log.records[&key][offset as usize].1.clone();
            self.next.insert(key, offset + 1);
            let source = Source {
                input: key.0,
                partition: key.1,
                offset,
            };
            let effects = self.driver.apply(source, event, now);
            Letters(&mut store.dead_letters).act(effects);
        }
        true
    }

    /// One 100 ms step of the poll loop: a few fetches (a backlog is read faster than it was
    /// produced) unless paused, and every tenth step the statistics and the commit.
    fn poll(
        &mut self,
        log: &Log,
        store: &mut Store,
        now: DateTime<Utc>,
        tenth: bool,
        postgres_up: bool,
        seed: &mut u64,
    ) {
        if !self.paused && now >= self.fetching_from {
            for _ in 0..(1 + next(seed) % 4) {
                self.fetch(log, store, now, seed);
            }
        }
        if tenth {
            self.statistics();
            self.commit(store, now, postgres_up);
        }
    }

    /// The statistics callback: partitions whose fetcher is at the end.
    fn statistics(&mut self) {
        for (&key, &offset) in &self.next {
            if offset >= self.fetched_end[&key] {
                self.driver.reached_end(key.0, key.1);
            }
        }
    }

    /// The commit step of the poll loop: a new flush unless one is kept, written unless
    /// Postgres is down; while it is, reading pauses.
    fn commit(&mut self, store: &mut Store, now: DateTime<Utc>, postgres_up: bool) {
        if !postgres_up {
            store.db.inject(StoreFault::Refuse);
        }
        let written = self
            .driver
            .commit(now, &mut Letters(&mut store.dead_letters))
            .is_ok();
        if written && self.paused {
            self.paused = false;
            self.driver.resumed(now);
            self.fetching_from = now + TimeDelta::seconds(2);
        } else if !written {
            self.paused = true;
        }
    }
}

/// Runs the log in 100 ms steps until five minutes after its last record, with `faults`.
fn run_live(log: &Log, seed: u64, faults: &[Fault]) -> Store {
    let mut store = Store::default();
    let mut s = seed;
    let end = log
        .records
        .values()
        .filter_map(|r| r.last().map(|(at, _)| *at))
        .max()
        .unwrap_or(t(0))
        + TimeDelta::minutes(5);
    let mut now = t(0);
    let mut instance = Some(Live::start(log, &mut store, now));
    let mut restart_at = None;
    let mut frozen_until: Option<DateTime<Utc>> = None;
    let mut joined: Option<Live> = None;
    // A dead member the coordinator still counts: the seconds until the watchdog rejoins.
    let mut ghost: Option<i64> = None;
    // When the rejoin leaves the group (false) or joins it again (true).
    let mut rejoin: Option<(DateTime<Utc>, bool)> = None;
    let mut step = 0u64;
    while now < end {
        now += MS(100);
        step += 1;
        let second = (now - t(0)).num_seconds();
        let tenth = step.is_multiple_of(10);
        let postgres_up = !faults.iter().any(
            |f| matches!(f, Fault::Postgres { at, secs } if (*at..at + secs).contains(&second)),
        );
        if tenth {
            for f in faults {
                match f {
                    Fault::Kill { at, down } if *at == second && instance.is_some() => {
                        instance = None;
                        restart_at = Some(now + TimeDelta::seconds(*down));
                    }
                    Fault::Ghost { at, down, unread }
                        if *at == second && instance.is_some() && joined.is_none() =>
                    {
                        instance = None;
                        restart_at = Some(now + TimeDelta::seconds(*down));
                        ghost = Some(*unread);
                    }
                    Fault::Freeze { at, secs } if *at == second && frozen_until.is_none() => {
                        frozen_until = Some(now + TimeDelta::seconds(*secs));
                    }
                    // A rebalance: every owner writes what it can before letting go (the
                    // revoke callback), then each starts on its new partitions from the store.
                    Fault::Scale { at, .. }
                        if *at == second && frozen_until.is_none() && joined.is_none() =>
                    {
                        if let Some(live) = instance.as_mut() {
                            live.assign(&mut store, now, [0], postgres_up);
                            joined = Some(Live::start_on(&mut store, now, 1..log.partitions));
                        }
                    }
                    Fault::Scale { at, secs }
                        if at + secs == second && frozen_until.is_none() && joined.is_some() =>
                    {
                        if let (Some(first), Some(mut other)) = (instance.as_mut(), joined.take()) {
                            // The second one leaves: it lets its partitions go, then the
                            // first is assigned everything.
                            let theirs: Vec<i32> = other.driver.engine().owned();
                            if !postgres_up {
                                store.db.inject(StoreFault::Refuse);
                            }
                            other.driver.revoke(
                                &theirs,
                                now,
                                &mut Letters(&mut store.dead_letters),
                            );
                            first.assign(&mut store, now, 0..log.partitions, postgres_up);
                        }
                    }
                    _ => {}
                }
            }
        }
        if restart_at.is_some_and(|r| now >= r) {
            restart_at = None;
            // It gets back its own share: the other instance keeps what it has, and so does
            // a dead member the coordinator still counts.
            instance = Some(match (joined.is_some(), ghost) {
                (true, _) | (false, Some(_)) => Live::start_on(&mut store, now, [0]),
                (false, None) => Live::start(log, &mut store, now),
            });
            if let Some(unread) = ghost.take() {
                rejoin = Some((now + TimeDelta::seconds(unread), false));
            }
        }
        // The watchdog's rejoin: leave (the revocation writes what it can), wait out a
        // session, join again and be assigned everything.
        match (rejoin, instance.as_mut()) {
            (Some((when, false)), Some(live)) if now >= when => {
                let owned = live.driver.engine().owned();
                if !postgres_up {
                    store.db.inject(StoreFault::Refuse);
                }
                live.driver
                    .revoke(&owned, now, &mut Letters(&mut store.dead_letters));
                live.next.clear();
                rejoin = Some((now + TimeDelta::seconds(9), true));
            }
            (Some((when, true)), Some(live)) if now >= when => {
                rejoin = None;
                live.assign(&mut store, now, 0..log.partitions, postgres_up);
            }
            (Some(_), None) => rejoin = None,
            _ => {}
        }
        let Some(live) = instance.as_mut() else {
            continue;
        };
        match frozen_until {
            Some(until) if now < until => continue,
            Some(_) => {
                // Woken up: the first poll serves the statistics and the commit falls due
                // before any fetch has come back.
                frozen_until = None;
                live.driver.resumed(now);
                live.fetching_from = now + TimeDelta::seconds(1);
                live.statistics();
                live.commit(&mut store, now, postgres_up);
            }
            None => {}
        }
        live.poll(log, &mut store, now, tenth, postgres_up, &mut s);
        if let Some(other) = joined.as_mut() {
            other.poll(log, &mut store, now, tenth, postgres_up, &mut s);
        }
    }
    if let Some(live) = instance.as_mut() {
        live.fetch(log, &mut store, now, &mut s);
        live.statistics();
        live.commit(&mut store, now + TimeDelta::hours(1), true);
    }
    store
}

#[test]
fn a_live_stream_without_faults_counts_every_call_once() {
    let log = Log::traffic(11, 2, 6);
    let store = run_live(&log, 11, &[]);
    let (requests, timeouts, _) = expected_totals(&log.topics());
    assert_eq!(sum(&store), (requests, timeouts));
}

fn faults() -> impl Strategy<Value = Vec<Fault>> {
    let kill = (1i64..420, 0i64..21).prop_map(|(at, down)| Fault::Kill { at, down });
    let ghost = (1i64..420, 0i64..21, 10i64..30).prop_map(|(at, down, unread)| Fault::Ghost {
        at,
        down,
        unread,
    });
    let postgres = (20i64..420, 5i64..70).prop_map(|(at, secs)| Fault::Postgres { at, secs });
    let freeze = (20i64..420, 4i64..30).prop_map(|(at, secs)| Fault::Freeze { at, secs });
    let scale = (20i64..400, 5i64..120).prop_map(|(at, secs)| Fault::Scale { at, secs });
    prop::collection::vec(
        prop_oneof![3 => kill, 2 => ghost, 1 => postgres, 1 => freeze, 2 => scale],
        1..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// kill -9, Postgres outages and freezes at any moments give the numbers of a run without them.
    #[test]
    fn faults_in_real_time_change_nothing(seed in 0u64..1_000, faults in faults()) {
        let log = Log::traffic(seed, 2, 6);
        let clean = run_live(&log, seed, &[]);
        let faulty = run_live(&log, seed ^ 0xF00D, &faults);
        let (requests, timeouts, _) = expected_totals(&log.topics());
        prop_assert_eq!(sum(&clean), (requests, timeouts));
        same_rows(&clean, &faulty)?;
        prop_assert_eq!(&clean.dead_letters, &faulty.dead_letters);
    }
}
