//! The engine on its own: joins, windows and flushes. The simulations that run it through
//! the driver, with a store, crashes and rebalances, are in `driver/tests.rs`.

use chrono::{DateTime, Utc};
use metrics_core::events::{Event, RequestEvent, ResponseEvent};

use super::*;

pub(crate) fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_699_999_980 + s, 0).unwrap()
}

pub(crate) fn config() -> EngineConfig {
    EngineConfig {
        ttl: TimeDelta::seconds(70),
        grace: TimeDelta::seconds(2),
        idle_after: TimeDelta::seconds(3),
        tenant_scoped: false,
    }
}

pub(crate) fn request(id: &str, at: i64, model: &str) -> Event {
    Event::Request(RequestEvent {
        request_id: id.parse().unwrap(),
        tenant_id: "acme".parse().unwrap(),
        route: "/chat".parse().unwrap(),
        model: model.parse().unwrap(),
        provider: None,
        timestamp: t(at),
        prompt_tokens: 100,
        user_id_hash: None,
        metadata: None,
    })
}

pub(crate) fn response(id: &str, at: i64, latency_ms: u64, error: bool) -> Event {
    Event::Response(ResponseEvent {
        request_id: id.parse().unwrap(),
        timestamp: t(at),
        latency_ms,
        completion_tokens: 10 + latency_ms % 7,
        finish_reason: "stop".into(),
        error: error.then(|| "upstream 500".into()),
        time_to_first_token_ms: latency_ms.is_multiple_of(3).then_some(latency_ms / 3),
        cached_prompt_tokens: Some(latency_ms % 50),
        cache_creation_tokens: None,
        reasoning_tokens: None,
        error_type: None,
        response_model: None,
        tenant_id: None,
    })
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
pub(crate) fn src(input: Input, offset: i64) -> Source {
    Source {
        input,
        partition: 0,
        offset,
    }
}

fn stamped(event: Event, tenant: &str) -> Event {
    match event {
        Event::Response(mut r) => {
            r.tenant_id = Some(tenant.parse().unwrap());
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

/// Both input partitions read to their end: an idle spell may follow.
fn both_at_end(engine: &mut Engine) {
    engine.reached_end(Input::Requests, 0);
    engine.reached_end(Input::Responses, 0);
}

/// Pair "a" at 10 s, then both partitions read to their end.
fn a_pair_then_silence(engine: &mut Engine) {
    engine.apply(src(Input::Requests, 0), request("a", 10, "gpt-4o"), t(11));
    engine.apply(
        src(Input::Responses, 0),
        response("a", 11, 100, false),
        t(12),
    );
    both_at_end(engine);
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

/// The other side of that rule: once both partitions are read to their end and silent for the
/// idle time, the clock stands in for how far reading has got, and a request stamped more than
/// a TTL ago that still waits is a timeout, its response read afterwards an orphan. A clean run
/// ends it so too: traffic stamped that old and produced live is counted exactly only when its
/// two halves reach the broker within the idle time of each other.
#[test]
fn an_old_request_whose_response_comes_after_an_idle_spell_times_out() {
    let mut engine = fresh_engine();
    a_pair_then_silence(&mut engine);
    engine.flush(t(1000));
    engine.apply(
        src(Input::Requests, 1),
        request("b", 200, "gpt-4o"),
        t(1001),
    );
    both_at_end(&mut engine);
    let (waiting, _) = engine.flush(t(1003));
    assert!(
        waiting.decisions.is_empty(),
        "silent for less than the idle time: {:?}",
        waiting.decisions
    );
    let (idle, _) = engine.flush(t(1005));
    let timeouts: Vec<&str> = idle
        .decisions
        .iter()
        .filter(|d| d.ended == Ended::TimedOut)
        .map(|d| d.request_id.as_str())
        .collect();
    assert_eq!(timeouts, ["b"]);
    assert_eq!(
        idle.windows().iter().map(|(_, a)| a.timeouts).sum::<u64>(),
        1
    );
    // The timed-out id is forgotten at once (two TTLs after it, by the clock): the response
    // waits alone until the next idle spell gives it up.
    engine.apply(
        src(Input::Responses, 1),
        response("b", 201, 500, false),
        t(1006),
    );
    both_at_end(&mut engine);
    let (after, effects) = engine.flush(t(1010));
    assert!(
        matches!(effects.as_slice(), [Effect::DeadLetter { .. }]),
        "{effects:?}"
    );
    assert!(after.windows().iter().all(|(_, a)| a.completed == 0));
}

/// A paired call is costed at the price in force at its request's time, each token type at
/// its own rate: a price cut at the start of a minute applies to that minute's window on.
#[test]
fn a_call_is_costed_at_the_price_of_its_request_time_by_token_type() {
    let from = t(60).to_rfc3339();
    let json = format!(
        r#"{{"models": {{"m": [{{"input": 2, "output": 10, "cached_input": 1, "cache_write": 4, "reasoning": 20}},
            {{"valid_from": "{from}", "input": 1, "output": 5}}]}}}}"#
    );
    let mut engine = Engine::new(config(), PricingTable::with_file(&json).unwrap());
    engine.assign(
        0,
        [(Input::Requests, None), (Input::Responses, None)],
        Vec::new(),
        t(0),
    );
    for (i, (id, at)) in [("before", 59), ("after", 60)].into_iter().enumerate() {
        let Event::Response(mut r) = response(id, at + 1, 100, false) else {
            unreachable!()
        };
        // 100 prompt tokens: 30 read from the cache, 20 written; 12 completion, 2 reasoning.
        (r.cached_prompt_tokens, r.cache_creation_tokens) = (Some(30), Some(20));
        (r.completion_tokens, r.reasoning_tokens) = (12, Some(2));
        let offset = i64::try_from(i).unwrap();
        engine.apply(
            src(Input::Requests, offset),
            request(id, at, "m"),
            t(at + 1),
        );
        engine.apply(src(Input::Responses, offset), Event::Response(r), t(at + 1));
    }
    engine.reached_end(Input::Requests, 0);
    engine.reached_end(Input::Responses, 0);
    let (flush, _) = engine.flush(t(3600));
    let costs: Vec<(i64, u64)> = flush
        .windows()
        .iter()
        .map(|(key, a)| ((key.start - t(0)).num_seconds(), a.cost_nanos))
        .collect();
    // Before: 50 plain input × $2 + 30 read × $1 + 20 written × $4 + 10 output × $10 + 2
    // reasoning × $20, per million tokens = $350 / 10⁶ = 350,000 nano-dollars. After (input
    // $1 and output $5 for every type): 100 × $1 + 12 × $5 = $160 / 10⁶.
    assert_eq!(
        costs,
        [
            (0, (100 + 30 + 80 + 100 + 40) * 1_000),
            (60, (100 + 60) * 1_000)
        ]
    );
    // Split by type: input, cached input, cache write, output, reasoning.
    let parts: Vec<[u64; 5]> = flush
        .windows()
        .iter()
        .map(|(_, a)| a.cost_parts_nanos)
        .collect();
    assert_eq!(
        parts,
        [
            [100_000, 30_000, 80_000, 100_000, 40_000],
            [50_000, 30_000, 20_000, 50_000, 10_000]
        ]
    );
    let cache: Vec<(u64, u64)> = flush
        .windows()
        .iter()
        .map(|(_, a)| (a.cache_creation_tokens, a.reasoning_tokens))
        .collect();
    assert_eq!(cache, [(20, 2), (20, 2)]);
}
