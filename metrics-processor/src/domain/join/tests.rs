use chrono::{DateTime, TimeDelta, Utc};
use metrics_core::events::{RequestEvent, ResponseEvent};

use std::sync::Arc;

use super::*;
use crate::domain::offsets::Input;

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
}

fn request(id: &str, at: i64, offset: i64) -> Sourced<RequestEvent> {
    Sourced {
        source: Source {
            input: Input::Requests,
            partition: 0,
            offset,
        },
        value: RequestEvent {
            request_id: id.parse().unwrap(),
            tenant_id: "acme".parse().unwrap(),
            route: "/chat".parse().unwrap(),
            model: "gpt-4o".parse().unwrap(),
            provider: None,
            timestamp: t(at),
            prompt_tokens: 10,
            user_id_hash: Some("u".into()),
            metadata: Some(serde_json::Map::new()),
        },
    }
}

fn response(id: &str, at: i64, offset: i64) -> Sourced<ResponseEvent> {
    Sourced {
        source: Source {
            input: Input::Responses,
            partition: 0,
            offset,
        },
        value: ResponseEvent {
            request_id: id.parse().unwrap(),
            timestamp: t(at),
            latency_ms: 100,
            completion_tokens: 5,
            finish_reason: "stop".into(),
            error: None,
            time_to_first_token_ms: None,
            cached_prompt_tokens: None,
            cache_creation_tokens: None,
            reasoning_tokens: None,
            error_type: None,
            response_model: None,
            tenant_id: None,
        },
    }
}

fn joiner() -> Joiner {
    Joiner::new(TimeDelta::seconds(300))
}

fn paired(outcome: Option<Outcome>) -> (String, String) {
    match outcome {
        Some(Outcome::Paired { request, response }) => (
            request.value.request_id.to_string(),
            response.value.request_id.into_string(),
        ),
        other => panic!("expected a pair, got {other:?}"),
    }
}

#[test]
fn a_response_after_its_request_pairs() {
    let mut j = joiner();
    assert_eq!(j.on_request("a", request("a", 0, 0)), None);
    assert_eq!(
        paired(j.on_response("a", response("a", 1, 0))),
        ("a".into(), "a".into())
    );
    assert_eq!(j.pending_requests(), 0);
}

#[test]
fn a_response_before_its_request_pairs_too() {
    let mut j = joiner();
    assert_eq!(j.on_response("a", response("a", 1, 0)), None);
    assert_eq!(j.pending_responses(), 1);
    assert_eq!(
        paired(j.on_request("a", request("a", 0, 0))),
        ("a".into(), "a".into())
    );
    assert_eq!(j.pending_responses(), 0);
}

#[test]
fn a_second_delivery_of_either_half_is_a_duplicate_before_and_after_pairing() {
    let mut j = joiner();
    j.on_request("a", request("a", 0, 0));
    assert!(matches!(
        j.on_request("a", request("a", 0, 1)),
        Some(Outcome::Duplicate(_))
    ));
    paired(j.on_response("a", response("a", 1, 0)));
    assert!(matches!(
        j.on_request("a", request("a", 0, 2)),
        Some(Outcome::Duplicate(_))
    ));
    assert!(matches!(
        j.on_response("a", response("a", 1, 1)),
        Some(Outcome::Duplicate(_))
    ));
    j.on_response("b", response("b", 1, 2));
    assert!(matches!(
        j.on_response("b", response("b", 1, 3)),
        Some(Outcome::Duplicate(_))
    ));
}

#[test]
fn waiting_requests_share_their_names_and_id() {
    let mut j = joiner();
    j.on_request("a", request("a", 0, 0));
    j.on_request("b", request("b", 0, 1));
    let Some(Outcome::Paired { request: a, .. }) = j.on_response("a", response("a", 1, 0)) else {
        panic!()
    };
    let Some(Outcome::Paired { request: b, .. }) = j.on_response("b", response("b", 1, 1)) else {
        panic!()
    };
    assert!(
        Arc::ptr_eq(&a.value.names, &b.value.names),
        "one copy of tenant, route and model"
    );
    assert_eq!(&*a.value.names.model, "gpt-4o");
    assert_eq!(a.value.prompt_tokens, 10);
}

#[test]
fn a_request_without_response_times_out_once_the_watermark_passes_its_ttl() {
    let mut j = joiner();
    j.on_request("a", request("a", 0, 0));
    assert!(
        j.advance(t(300), false).is_empty(),
        "not before timestamp + TTL"
    );
    let outcomes = j.advance(t(301), false);
    assert!(matches!(&outcomes[..], [Outcome::TimedOut(r)] if &*r.value.request_id == "a"));
    assert_eq!(j.ended("a"), Some(Ended::TimedOut));
    // Its response, arriving now, is an orphan: the request was already counted.
    let late = j.on_response("a", response("a", 2, 0));
    assert!(matches!(
        late,
        Some(Outcome::Orphaned {
            reason: OrphanReason::AfterTimeout,
            ..
        })
    ));
}

#[test]
fn a_response_without_request_becomes_an_orphan() {
    let mut j = joiner();
    j.on_response("a", response("a", 10, 0));
    assert!(j.advance(t(310), false).is_empty());
    let outcomes = j.advance(t(311), false);
    assert!(matches!(
        &outcomes[..],
        [Outcome::Orphaned {
            reason: OrphanReason::NoRequest,
            ..
        }]
    ));
    // The request, arriving after its response was given up on, had no answer in time.
    assert!(matches!(
        j.on_request("a", request("a", 9, 0)),
        Some(Outcome::TimedOut(_))
    ));
}

#[test]
fn finished_ids_are_forgotten_one_ttl_later_and_release_their_offsets() {
    let mut j = joiner();
    j.on_request("a", request("a", 0, 4));
    paired(j.on_response("a", response("a", 10, 7)));
    assert_eq!(j.needed().min(Input::Requests, 0), Some(4));
    assert_eq!(j.needed().min(Input::Responses, 0), Some(7));
    j.advance(t(310), false);
    assert_eq!(j.ended("a"), Some(Ended::Paired));
    j.advance(t(311), false);
    assert_eq!(j.ended("a"), None);
    assert_eq!(j.needed().min(Input::Requests, 0), None);
    assert_eq!(j.needed().min(Input::Responses, 0), None);
}

#[test]
fn pending_halves_hold_their_offsets_until_they_end() {
    let mut j = joiner();
    j.on_response("b", response("b", 0, 3));
    j.on_request("a", request("a", 0, 5));
    assert_eq!(j.needed().min(Input::Requests, 0), Some(5));
    assert_eq!(j.needed().min(Input::Responses, 0), Some(3));
    j.advance(t(301), false); // both end, and are remembered for another TTL
    assert_eq!(j.needed().min(Input::Requests, 0), Some(5));
    j.advance(t(601), false);
    assert_eq!(j.needed().min(Input::Requests, 0), None);
    j.advance(t(602), false);
    assert_eq!(j.needed().min(Input::Requests, 0), None);
    assert_eq!(j.needed().min(Input::Responses, 0), None);
}

/// What a call too late to be joined ends as, by the order its halves were read in.
fn too_late_call(response_waits: bool, request_first: bool) -> Vec<&'static str> {
    let mut j = joiner();
    let kinds = |outcomes: Vec<Outcome>| -> Vec<&'static str> {
        outcomes
            .iter()
            .map(|o| match o {
                Outcome::Paired { .. } => "paired",
                Outcome::TimedOut(_) => "timeout",
                Outcome::Orphaned { .. } => "orphan",
                Outcome::Duplicate(_) => "duplicate",
            })
            .collect()
    };
    let mut ended = Vec::new();
    if request_first {
        ended.extend(kinds(j.too_late_request("a", request("a", 0, 1))));
        ended.extend(kinds(j.too_late_response("a", response("a", 1, 1))));
    } else if response_waits {
        // The response was read in time and waits; its request comes too late.
        assert!(j.on_response("a", response("a", 1, 1)).is_none());
        ended.extend(kinds(j.too_late_request("a", request("a", 0, 1))));
    } else {
        ended.extend(kinds(j.too_late_response("a", response("a", 1, 1))));
        ended.extend(kinds(j.too_late_request("a", request("a", 0, 1))));
    }
    assert_eq!(
        j.pending_requests() + j.pending_responses(),
        0,
        "nothing waits"
    );
    ended.sort_unstable();
    ended
}

#[test]
fn a_call_too_late_to_be_joined_is_a_timeout_and_an_orphan_in_any_order() {
    for (response_waits, request_first) in [(false, true), (true, false), (false, false)] {
        assert_eq!(
            too_late_call(response_waits, request_first),
            ["orphan", "timeout"],
            "response waits: {response_waits}, request first: {request_first}"
        );
    }
}

#[test]
fn a_second_delivery_of_a_call_too_late_to_be_joined_is_a_duplicate() {
    let mut j = joiner();
    j.too_late_request("a", request("a", 0, 1));
    let again = j.too_late_request("a", request("a", 0, 2));
    assert!(matches!(again[..], [Outcome::Duplicate(_)]), "{again:?}");
}
