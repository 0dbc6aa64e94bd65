//! Restoring an instance from the store and a replay against an uninterrupted run, case by
//! case: the same input, a restart at every point, the same windows.

use super::*;

/// Runs `topics` on one instance, committing after every record; with `crash_at`, the
/// instance is killed after that many records and a new one takes over from the store.
fn run(topics: &Topics, crash_at: Option<usize>) -> Store {
    let mut store = Store::default();
    let mut seed = 11;
    let mut instance = Instance::start(topics, &mut store);
    let mut steps = 0;
    while instance.step(topics, &mut store, next(&mut seed)) {
        instance.commit(&mut store);
        steps += 1;
        if crash_at == Some(steps) {
            // kill -9: whatever was not committed is gone.
            instance = Instance::start(topics, &mut store);
        }
    }
    instance.finish(topics, &mut store, &mut seed);
    store
}

/// Pairs `p{i}` for `ids`, the request at `first + i * step` s, answered a second later.
fn pairs(topics: &mut Topics, ids: std::ops::Range<i64>, first: i64, step: i64) {
    for i in ids {
        let id = format!("p{i}");
        topics.produce(request(&id, first + i * step, "gpt-4o"));
        topics.produce(response(&id, first + 1 + i * step, 90, false));
    }
}

/// Every restart point gives the rows of the run without one.
fn every_restart_agrees(topics: &Topics) {
    let clean = run(topics, None);
    let records: usize = topics.records.values().map(Vec::len).sum();
    for crash_at in 1..records {
        let restarted = run(topics, Some(crash_at));
        if let Err(e) = same_rows(&clean, &restarted) {
            panic!("restart after {crash_at} of {records} records: {e}");
        }
        assert_eq!(
            clean.dead_letters, restarted.dead_letters,
            "restart after {crash_at}"
        );
    }
}

/// A request counted as a timeout is delivered again later (a producer retry, or a client
/// posting a batch again after a partial 503): a clean run remembers the settled id for two
/// TTLs after the request and takes the retry for a duplicate, and so must a restored one.
#[test]
fn a_retried_request_after_its_timeout_is_a_duplicate_after_a_restart_too() {
    let mut topics = Topics::new(1);
    topics.produce(request("a", 0, "gpt-4o"));
    pairs(&mut topics, 0..14, 5, 8);
    // Read when the watermark is past the timeout (70 s) but within two TTLs (140 s).
    topics.produce(request("a", 0, "gpt-4o"));
    pairs(&mut topics, 14..20, 5, 8);
    let clean = run(&topics, None);
    assert_eq!(
        sum(&clean),
        (21, 1),
        "the retry is a duplicate in a clean run"
    );
    every_restart_agrees(&topics);
}

/// Hosts' clocks differ: a request stamped a minute after its own response. A clean run
/// pairs them; so must a restored one, whatever point the restart comes at.
#[test]
fn a_request_stamped_after_its_response_is_paired_after_a_restart_too() {
    let mut topics = Topics::new(1);
    pairs(&mut topics, 0..6, 5, 10);
    topics.produce(response("skewed", 60, 120, false));
    topics.produce(request("skewed", 125, "gpt-4o"));
    pairs(&mut topics, 6..30, 5, 10);
    let clean = run(&topics, None);
    assert_eq!(sum(&clean), (31, 0), "paired in a clean run");
    every_restart_agrees(&topics);
}

/// The same, with the request read first in the replay: a response stamped later than the
/// skewed one stands before it in its partition.
#[test]
fn a_request_stamped_after_its_response_and_read_first_is_paired_after_a_restart_too() {
    let mut topics = Topics::new(1);
    pairs(&mut topics, 0..6, 5, 10);
    topics.produce(request("early", 130, "gpt-4o"));
    topics.produce(response("early", 140, 120, false));
    topics.produce(request("skewed", 125, "gpt-4o"));
    topics.produce(response("skewed", 60, 120, false));
    pairs(&mut topics, 6..30, 100, 10);
    let clean = run(&topics, None);
    assert_eq!(sum(&clean), (32, 0), "paired in a clean run");
    every_restart_agrees(&topics);
}

/// Runs `topics` on one instance that commits after every `every` records.
fn run_committing(topics: &Topics, seed: u64, every: usize) -> Store {
    let mut store = Store::default();
    let mut s = seed;
    let mut instance = Instance::start(topics, &mut store);
    let mut n = 0;
    while instance.step(topics, &mut store, next(&mut s)) {
        n += 1;
        if n % every == 0 {
            instance.commit(&mut store);
        }
    }
    instance.finish(topics, &mut store, &mut s);
    store
}

/// A call posted whole more than a TTL after it happened (a client flushing an old buffer)
/// is too late to be joined, whichever half is read first and whenever commits happen: its
/// request counts as a timeout in its own minute, its response goes to the dead-letter topic.
#[test]
fn a_late_pair_older_than_the_ttl_is_a_timeout_and_an_orphan_whatever_the_commit_timing() {
    for response_first in [false, true] {
        let mut topics = Topics::new(1);
        pairs(&mut topics, 0..20, 5, 8);
        // Read when the stream is at about 165 s: stamped 100 s before, the TTL is 70 s.
        let mut late = [
            request("late", 65, "gpt-4o"),
            response("late", 66, 800, false),
        ];
        if response_first {
            late.reverse();
        }
        for event in late {
            topics.produce(event);
        }
        pairs(&mut topics, 20..40, 5, 8);
        let clean = run(&topics, None);
        assert_eq!(
            sum(&clean),
            (41, 1),
            "the late call is a timeout (response first: {response_first})"
        );
        assert!(
            clean.dead_letters.contains("late"),
            "its response is an orphan"
        );
        for every in [1, 2, 3, 5, 8, 13, 1000] {
            for seed in 0..4 {
                let other = run_committing(&topics, seed, every);
                if let Err(e) = same_rows(&clean, &other) {
                    panic!("commits every {every} records, seed {seed}: {e}");
                }
                assert_eq!(
                    clean.dead_letters, other.dead_letters,
                    "commits every {every}"
                );
            }
        }
        every_restart_agrees(&topics);
    }
}

/// Ten minutes of traffic with what makes a restore differ from a clean run: timed-out
/// requests retried within two TTLs, paired requests retried, requests stamped up to a
/// minute after their responses, responses produced long before their requests, late calls
/// posted whole, and duplicates, on top of the usual pairs, timeouts and orphans.
fn hostile(seed: u64, partitions: i32) -> Topics {
    let mut s = seed;
    let mut produced: Vec<(i64, Event)> = Vec::new();
    for i in 0..240i64 {
        let id = format!("h{seed}-{i}");
        let at = i * 600 / 240;
        let r = next(&mut s);
        let latency = 50 + r % 9_000;
        let back = at + (latency / 1000) as i64;
        match r % 12 {
            0 => {
                // a timeout, retried after it was given up on but within two TTLs
                produced.push((at, request(&id, at, "gpt-4o")));
                produced.push((at + 90, request(&id, at, "gpt-4o")));
            }
            1 => {
                // a pair whose request is retried after its window was written (a minute
                // and the grace after the request at most), well before its id is forgotten
                // (a TTL after the response); near that end, whether a retry is still known
                // depends on how far reading has got, in a clean run as after a restart
                let back = back + 5;
                produced.push((at, request(&id, at, "gpt-4o-mini")));
                produced.push((back, response(&id, back, latency, false)));
                produced.push((at + 64, request(&id, at, "gpt-4o-mini")));
            }
            2 => {
                // the request's host is ahead: stamped a few seconds after its response.
                // (Skews near a minute also move the reading progress by that much, and a
                // retry near the end of its id's memory is then known or not depending on
                // how the two topics' reads interleave: see the README, Counted once.)
                let skew = (r >> 8) as i64 % 6;
                produced.push((at, response(&id, at, latency, false)));
                produced.push((at + 1, request(&id, at + skew, "gpt-4o")));
            }
            3 => {
                // the response produced well before the request
                produced.push((at, response(&id, back, latency, r.is_multiple_of(7))));
                produced.push((at + 20, request(&id, at, "gpt-4o")));
            }
            4 => produced.push((at, response(&id, back, latency, false))), // an orphan
            6 | 7 => {
                // a late call, posted whole when it is often past its window and the grace
                // but well within the TTL (a client flushing a buffer); now and then never
                // answered, or with the response first. (Within seconds of the TTL, whether
                // it is joined depends on how the topics' reads interleave, in a clean run
                // as after a restart: see the README, Timeouts.)
                let stamped = at - 30 - (r >> 8) as i64 % 15;
                let back = stamped + (latency / 1000) as i64;
                match (r >> 16) % 4 {
                    0 => produced.push((at, request(&id, stamped, "gpt-4o"))),
                    1 => {
                        produced.push((at, response(&id, back, latency, false)));
                        produced.push((at, request(&id, stamped, "gpt-4o")));
                    }
                    _ => {
                        produced.push((at, request(&id, stamped, "gpt-4o")));
                        produced.push((at, response(&id, back, latency, false)));
                    }
                }
            }
            8 if at > 200 => {
                // a late call posted whole more than a TTL after it happened: too late to
                // be joined (a timeout and an orphan), in either order. Reading may be up to
                // a minute behind `at` here (partitions are read oldest first), and a call
                // within seconds of the TTL behind it may be joined or not, depending on how
                // the topics' reads interleave: so these are well beyond it.
                let stamped = at - 160 - (r >> 8) as i64 % 20;
                let back = stamped + (latency / 1000) as i64;
                if (r >> 16).is_multiple_of(2) {
                    produced.push((at, request(&id, stamped, "gpt-4o-mini")));
                    produced.push((at, response(&id, back, latency, false)));
                } else {
                    produced.push((at, response(&id, back, latency, false)));
                    produced.push((at, request(&id, stamped, "gpt-4o-mini")));
                }
            }
            5 => {
                produced.push((at, request(&id, at, "gpt-4o")));
                produced.push((back, response(&id, back, latency, false)));
                produced.push((back, response(&id, back, latency, false)));
            }
            _ => {
                produced.push((at, request(&id, at, "gpt-4o-mini")));
                produced.push((back, response(&id, back, latency, r.is_multiple_of(11))));
            }
        }
    }
    produced.sort_by_key(|(when, _)| *when);
    let mut topics = Topics::new(partitions);
    for (_, event) in produced {
        topics.produce(event);
    }
    topics
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Restarts at random points in hostile traffic give the windows of a run without one.
    #[test]
    fn restarts_in_hostile_traffic_change_nothing(
        seed in 0u64..10_000,
        crashes in prop::collection::vec(1usize..600, 1..4),
        every in 1usize..30,
    ) {
        let topics = hostile(seed, 2);
        let clean = run_clean(&topics, seed);
        let crashed = run_with_crashes(&topics, seed, &crashes, every);
        same_rows(&clean, &crashed)?;
        prop_assert_eq!(&clean.dead_letters, &crashed.dead_letters);
    }
}
