use chrono::{DateTime, TimeDelta, Utc};
use metrics_core::events::ResponseEvent;

use super::*;
use crate::domain::join::Names;
use metrics_core::pricing::Cost;

fn t(s: i64) -> DateTime<Utc> {
    // A minute boundary.
    DateTime::from_timestamp(1_699_999_980 + s, 0).unwrap()
}

fn names(model: &str) -> Names {
    Names {
        tenant: "acme".into(),
        route: "/chat".into(),
        model: model.into(),
        provider: None,
    }
}

fn response(latency_ms: u64, error: Option<&str>) -> ResponseEvent {
    ResponseEvent {
        request_id: "r".parse().unwrap(),
        timestamp: t(1),
        latency_ms,
        completion_tokens: 20,
        finish_reason: "stop".into(),
        error: error.map(Into::into),
        time_to_first_token_ms: Some(latency_ms / 2),
        cached_prompt_tokens: Some(30),
        cache_creation_tokens: None,
        reasoning_tokens: None,
        error_type: None,
        response_model: None,
        tenant_id: None,
    }
}

fn at(offset: i64) -> Source {
    Source {
        input: Input::Requests,
        partition: 0,
        offset,
    }
}

#[test]
fn requests_fall_into_the_minute_of_their_timestamp() {
    let w = Windows::new(TimeDelta::seconds(2));
    assert_eq!(w.key_of(&names("m"), t(0)).start, t(0));
    assert_eq!(w.key_of(&names("m"), t(59)).start, t(0));
    assert_eq!(w.key_of(&names("m"), t(60)).start, t(60));
}

#[test]
fn an_aggregate_counts_sums_and_histograms() {
    let mut a = Aggregate::default();
    a.record_paired(
        100,
        Some("openai"),
        &response(100, None),
        Cost {
            priced: true,
            parts: [5, 0, 0, 0, 0],
        },
    );
    a.record_paired(
        100,
        Some("openai"),
        &response(300, Some("boom")),
        Cost {
            priced: false,
            parts: [7, 0, 0, 0, 0],
        },
    );
    a.record_paired(
        100,
        None,
        &response(200, Some("")),
        Cost {
            priced: true,
            parts: [1, 0, 0, 0, 0],
        },
    );
    a.record_timeout(Some("anthropic"));
    assert_eq!(
        (a.requests, a.completed, a.errors, a.timeouts),
        (4, 3, 1, 1)
    );
    assert_eq!(a.avg_latency_ms(), 200.0);
    assert_eq!(a.avg_ttft_ms(), Some(100.0));
    assert_eq!(a.avg_prompt_tokens(), 100.0);
    assert_eq!(a.avg_completion_tokens(), 20.0);
    assert_eq!(a.cached_prompt_tokens, 90);
    assert_eq!((a.cost_nanos, a.unpriced, a.unpriced_tokens), (13, 1, 120));
    // Requests per provider, timeouts included; errors per type, untyped ones as _OTHER.
    let providers: Vec<_> = a.providers.iter().collect();
    assert_eq!(providers, [("anthropic", 1), ("openai", 2)]);
    let error_types: Vec<_> = a.error_types.iter().collect();
    assert_eq!(error_types, [("_OTHER", 1)]);
    let max = a.latency_quantile_ms(1.0);
    assert!((300..=303).contains(&max), "{max} is not 300 within 1%");
}

#[test]
fn a_window_closes_only_after_its_end_plus_grace() {
    let mut w = Windows::new(TimeDelta::seconds(2));
    let key = w.key_of(&names("m"), t(10));
    w.add(key, &[at(0)], |a| a.record_timeout(None));
    assert!(w.close(t(61)).is_empty());
    let closed = w.close(t(62));
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].1.requests, 1);
    assert_eq!(w.open_windows(), 0);
    assert_eq!(
        w.needed().min(Input::Requests, 0),
        None,
        "written windows release their offsets"
    );
}

#[test]
fn a_late_contribution_is_handed_out_as_a_partial_to_merge_not_a_replacement() {
    let mut w = Windows::new(TimeDelta::seconds(2));
    let key = w.key_of(&names("m"), t(10));
    for i in 0..3 {
        assert!(!w.add(key.clone(), &[at(i)], |a| a.record_timeout(None)));
    }
    let first = w.close(t(62));
    assert_eq!(first[0].1.requests, 3);
    assert!(
        w.add(key.clone(), &[at(9)], |a| a.record_timeout(None)),
        "late"
    );
    let second = w.close(t(63));
    assert_eq!(second.len(), 1);
    assert_eq!(
        second[0].1.requests, 1,
        "only the late part, to be added to the stored 3"
    );
}

#[test]
fn an_open_window_holds_its_oldest_offset_per_input_partition() {
    let mut w = Windows::new(TimeDelta::seconds(2));
    let key = w.key_of(&names("m"), t(10));
    w.add(key.clone(), &[at(8)], |a| a.record_timeout(None));
    w.add(key.clone(), &[at(5)], |a| a.record_timeout(None));
    w.add(key, &[at(9)], |a| a.record_timeout(None));
    assert_eq!(w.needed().min(Input::Requests, 0), Some(5));
}

#[test]
fn the_metrics_key_joins_tenant_route_and_model() {
    let w = Windows::new(TimeDelta::seconds(2));
    assert_eq!(
        w.key_of(&names("gpt-4o"), t(0)).metrics_key(),
        "acme|/chat|gpt-4o"
    );
}
