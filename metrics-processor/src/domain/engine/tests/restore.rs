//! Restoring an instance from the store and a replay against an uninterrupted run, case by
//! case: the same input, a restart at every point, the same windows.

use super::*;

/// Runs `topics` on one instance, committing after every record; with `crash_at`, the
/// instance is killed after that many records and a new one takes over from the store.
fn run(topics: &Topics, crash_at: Option<usize>) -> Store {
    let mut store = Store::default();
    let mut seed = 11;
    let mut instance = Instance::start(topics, &store);
    let mut steps = 0;
    while instance.step(topics, &mut store, next(&mut seed)) {
        instance.commit(&mut store);
        steps += 1;
        if crash_at == Some(steps) {
            // kill -9: whatever was not committed is gone.
            instance = Instance::start(topics, &store);
        }
    }
    instance.finish(topics, &mut store, &mut seed);
    store
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
    for i in 0..14 {
        let id = format!("p{i}");
        topics.produce(request(&id, 5 + i * 8, "gpt-4o"));
        topics.produce(response(&id, 6 + i * 8, 90, false));
    }
    // Read when the watermark is past the timeout (70 s) but within two TTLs (140 s).
    topics.produce(request("a", 0, "gpt-4o"));
    for i in 14..20 {
        let id = format!("p{i}");
        topics.produce(request(&id, 5 + i * 8, "gpt-4o"));
        topics.produce(response(&id, 6 + i * 8, 90, false));
    }
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
    for i in 0..6 {
        let id = format!("p{i}");
        topics.produce(request(&id, 5 + i * 10, "gpt-4o"));
        topics.produce(response(&id, 6 + i * 10, 90, false));
    }
    topics.produce(response("skewed", 60, 120, false));
    topics.produce(request("skewed", 125, "gpt-4o"));
    for i in 6..30 {
        let id = format!("p{i}");
        topics.produce(request(&id, 5 + i * 10, "gpt-4o"));
        topics.produce(response(&id, 6 + i * 10, 90, false));
    }
    let clean = run(&topics, None);
    assert_eq!(sum(&clean), (31, 0), "paired in a clean run");
    every_restart_agrees(&topics);
}

/// The same, with the request read first in the replay: a response stamped later than the
/// skewed one stands before it in its partition.
#[test]
fn a_request_stamped_after_its_response_and_read_first_is_paired_after_a_restart_too() {
    let mut topics = Topics::new(1);
    for i in 0..6 {
        let id = format!("p{i}");
        topics.produce(request(&id, 5 + i * 10, "gpt-4o"));
        topics.produce(response(&id, 6 + i * 10, 90, false));
    }
    topics.produce(request("early", 130, "gpt-4o"));
    topics.produce(response("early", 140, 120, false));
    topics.produce(request("skewed", 125, "gpt-4o"));
    topics.produce(response("skewed", 60, 120, false));
    for i in 6..30 {
        let id = format!("p{i}");
        topics.produce(request(&id, 100 + i * 10, "gpt-4o"));
        topics.produce(response(&id, 101 + i * 10, 90, false));
    }
    let clean = run(&topics, None);
    assert_eq!(sum(&clean), (32, 0), "paired in a clean run");
    every_restart_agrees(&topics);
}
