use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};

use super::*;

fn now() -> DateTime<Utc> {
    "2024-05-01T12:00:00Z".parse().unwrap()
}

fn request() -> Value {
    json!({
        "request_id": "req-1",
        "tenant_id": "acme",
        "route": "/chat",
        "model": "gpt-4o",
        "timestamp": "2024-05-01T11:59:30Z",
        "prompt_tokens": 120,
    })
}

fn response() -> Value {
    json!({
        "request_id": "req-1",
        "timestamp": "2024-05-01T11:59:31Z",
        "latency_ms": 850,
        "completion_tokens": 40,
        "finish_reason": "stop",
    })
}

fn with(mut base: Value, field: &str, value: Value) -> Value {
    base[field] = value;
    base
}

fn without(mut base: Value, field: &str) -> Value {
    base.as_object_mut().unwrap().remove(field);
    base
}

/// The reasons given for `field`, asserting it is the only failing field.
fn request_error(value: Value, field: &str) -> String {
    let errors = parse_request(&value, now(), &Limits::default()).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, field, "{errors:?}");
    errors[0].reason.clone()
}

fn response_error(value: Value, field: &str) -> String {
    let errors = parse_response(&value, now(), &Limits::default()).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, field, "{errors:?}");
    errors[0].reason.clone()
}

#[test]
fn a_complete_request_is_accepted_with_every_field() {
    let value = with(request(), "user_id_hash", json!("u-9f2"));
    let value = with(value, "metadata", json!({"app": "web"}));
    let event = parse_request(&value, now(), &Limits::default()).unwrap();
    assert_eq!(event.request_id, "req-1");
    assert_eq!(event.tenant_id, "acme");
    assert_eq!(event.route, "/chat");
    assert_eq!(event.model, "gpt-4o");
    assert_eq!(event.prompt_tokens, 120);
    assert_eq!(event.user_id_hash.as_deref(), Some("u-9f2"));
    assert_eq!(event.metadata.unwrap()["app"], "web");
}

#[test]
fn unknown_fields_are_ignored_and_not_carried_on() {
    let value = with(request(), "surprise", json!({"deep": [1, 2, 3]}));
    let event = parse_request(&value, now(), &Limits::default()).unwrap();
    let written: Value = serde_json::from_slice(&Event::Request(event).to_json()).unwrap();
    assert!(written.get("surprise").is_none());
}

#[test]
fn every_missing_required_request_field_is_named() {
    let errors = parse_request(&json!({}), now(), &Limits::default()).unwrap_err();
    let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "request_id",
            "tenant_id",
            "route",
            "model",
            "timestamp",
            "prompt_tokens"
        ]
    );
    assert!(errors.iter().all(|e| e.reason == "is required"));
}

#[test]
fn null_counts_as_missing() {
    assert_eq!(
        request_error(with(request(), "model", Value::Null), "model"),
        "is required"
    );
}

#[test]
fn a_body_that_is_not_an_object_is_rejected() {
    let errors = parse_request(&json!([1, 2]), now(), &Limits::default()).unwrap_err();
    assert_eq!(errors, vec![FieldError::new("", "must be a JSON object")]);
}

#[test]
fn strings_must_be_strings() {
    let reason = request_error(with(request(), "tenant_id", json!(42)), "tenant_id");
    assert_eq!(reason, "must be a string");
}

#[test]
fn identifiers_must_not_be_empty_or_blank() {
    assert_eq!(
        request_error(with(request(), "tenant_id", json!("")), "tenant_id"),
        "must not be empty"
    );
    assert_eq!(
        request_error(with(request(), "route", json!("   ")), "route"),
        "must not be empty"
    );
}

#[test]
fn identifiers_are_bounded_at_255_characters() {
    let ok = "m".repeat(255);
    assert!(parse_request(
        &with(request(), "model", json!(ok)),
        now(),
        &Limits::default()
    )
    .is_ok());
    let reason = request_error(with(request(), "model", json!("m".repeat(256))), "model");
    assert_eq!(reason, "must be at most 255 characters");
}

#[test]
fn identifiers_refuse_the_metrics_key_separator_and_control_characters() {
    let reason = request_error(with(request(), "route", json!("a|b")), "route");
    assert_eq!(reason, "must not contain '|' or control characters");
    request_error(with(request(), "tenant_id", json!("ac\nme")), "tenant_id");
}

#[test]
fn request_id_accepts_uuids_and_ulids() {
    for id in [
        "0b6f8a3c-1d2e-4f50-8a9b-0c1d2e3f4a5b",
        "01HXYZABCDEF0123456789ABCD",
        "svc:42.7_a",
    ] {
        let value = with(request(), "request_id", json!(id));
        assert!(
            parse_request(&value, now(), &Limits::default()).is_ok(),
            "{id}"
        );
    }
}

#[test]
fn request_id_charset_and_length_are_enforced() {
    let reason = request_error(with(request(), "request_id", json!("a b")), "request_id");
    assert!(reason.starts_with("may contain only"), "{reason}");
    let reason = request_error(
        with(request(), "request_id", json!("r".repeat(129))),
        "request_id",
    );
    assert_eq!(reason, "must be at most 128 characters");
    assert!(parse_request(
        &with(request(), "request_id", json!("r".repeat(128))),
        now(),
        &Limits::default()
    )
    .is_ok());
    assert_eq!(
        request_error(with(request(), "request_id", json!("")), "request_id"),
        "must not be empty"
    );
}

#[test]
fn token_counts_must_be_non_negative_integers_in_range() {
    assert_eq!(
        request_error(with(request(), "prompt_tokens", json!(-1)), "prompt_tokens"),
        "must not be negative"
    );
    assert_eq!(
        request_error(
            with(request(), "prompt_tokens", json!(1.5)),
            "prompt_tokens"
        ),
        "must be a whole number"
    );
    assert_eq!(
        request_error(
            with(request(), "prompt_tokens", json!("12")),
            "prompt_tokens"
        ),
        "must be a non-negative integer"
    );
    assert_eq!(
        request_error(
            with(request(), "prompt_tokens", json!(1e300)),
            "prompt_tokens"
        ),
        "must be a whole number"
    );
    let reason = request_error(
        with(request(), "prompt_tokens", json!(100_000_001)),
        "prompt_tokens",
    );
    assert_eq!(reason, "must be at most 100000000");
    assert!(parse_request(
        &with(request(), "prompt_tokens", json!(0)),
        now(),
        &Limits::default()
    )
    .is_ok());
}

#[test]
fn numbers_beyond_u64_are_rejected_not_wrapped() {
    let value: Value =
        serde_json::from_str(&request().to_string().replace("120", "18446744073709551616"))
            .unwrap();
    request_error(value, "prompt_tokens");
}

#[test]
fn timestamps_must_be_rfc3339() {
    let reason = request_error(
        with(request(), "timestamp", json!("yesterday")),
        "timestamp",
    );
    assert!(
        reason.starts_with("must be an RFC 3339 timestamp"),
        "{reason}"
    );
    request_error(with(request(), "timestamp", json!(1714564800)), "timestamp");
    let offset = with(request(), "timestamp", json!("2024-05-01T13:59:30+02:00"));
    let event = parse_request(&offset, now(), &Limits::default()).unwrap();
    assert_eq!(
        event.timestamp,
        "2024-05-01T11:59:30Z".parse::<DateTime<Utc>>().unwrap()
    );
}

#[test]
fn timestamps_are_bounded_by_the_configured_skew_and_age() {
    let limits = Limits {
        max_future_skew: TimeDelta::seconds(60),
        max_age: TimeDelta::hours(1),
        ..Limits::default()
    };
    let at = |t: DateTime<Utc>| with(request(), "timestamp", json!(t.to_rfc3339()));
    assert!(parse_request(&at(now() + TimeDelta::seconds(60)), now(), &limits).is_ok());
    assert!(parse_request(&at(now() - TimeDelta::hours(1)), now(), &limits).is_ok());
    let future = parse_request(&at(now() + TimeDelta::seconds(61)), now(), &limits).unwrap_err();
    assert_eq!(future[0].reason, "must not be more than 60s in the future");
    let past = parse_request(&at(now() - TimeDelta::seconds(3601)), now(), &limits).unwrap_err();
    assert_eq!(past[0].reason, "must not be more than 3600s in the past");
}

#[test]
fn user_id_hash_and_metadata_are_bounded() {
    request_error(
        with(request(), "user_id_hash", json!("h".repeat(129))),
        "user_id_hash",
    );
    request_error(with(request(), "user_id_hash", json!("")), "user_id_hash");
    let reason = request_error(with(request(), "metadata", json!("flat")), "metadata");
    assert_eq!(reason, "must be a JSON object");
    let big = json!({"blob": "x".repeat(MAX_METADATA_BYTES)});
    let reason = request_error(with(request(), "metadata", big), "metadata");
    assert_eq!(reason, "must be at most 4096 bytes of JSON");
}

#[test]
fn a_complete_response_is_accepted() {
    let value = with(response(), "time_to_first_token_ms", json!(120));
    let value = with(value, "cached_prompt_tokens", json!(64));
    let value = with(value, "error", json!("rate limited"));
    let event = parse_response(&value, now(), &Limits::default()).unwrap();
    assert_eq!(event.latency_ms, 850);
    assert_eq!(event.completion_tokens, 40);
    assert_eq!(event.time_to_first_token_ms, Some(120));
    assert_eq!(event.cached_prompt_tokens, Some(64));
    assert!(event.is_error());
}

#[test]
fn an_empty_error_does_not_mark_a_failure() {
    let event = parse_response(
        &with(response(), "error", json!("")),
        now(),
        &Limits::default(),
    )
    .unwrap();
    assert!(!event.is_error());
}

#[test]
fn every_missing_required_response_field_is_named() {
    let errors = parse_response(&json!({"surprise": 1}), now(), &Limits::default()).unwrap_err();
    let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "request_id",
            "timestamp",
            "latency_ms",
            "completion_tokens",
            "finish_reason"
        ]
    );
}

#[test]
fn latency_is_bounded_by_the_configured_ceiling() {
    let limits = Limits {
        max_latency_ms: 1000,
        ..Limits::default()
    };
    assert!(parse_response(&with(response(), "latency_ms", json!(1000)), now(), &limits).is_ok());
    let errors =
        parse_response(&with(response(), "latency_ms", json!(1001)), now(), &limits).unwrap_err();
    assert_eq!(
        errors,
        vec![FieldError::new("latency_ms", "must be at most 1000")]
    );
    assert_eq!(
        response_error(with(response(), "latency_ms", json!(-5)), "latency_ms"),
        "must not be negative"
    );
}

#[test]
fn time_to_first_token_cannot_exceed_latency() {
    let reason = response_error(
        with(response(), "time_to_first_token_ms", json!(851)),
        "time_to_first_token_ms",
    );
    assert_eq!(reason, "must not exceed latency_ms");
}

#[test]
fn finish_reason_and_error_are_bounded() {
    assert_eq!(
        response_error(
            with(response(), "finish_reason", json!("")),
            "finish_reason"
        ),
        "must be 1 to 64 characters"
    );
    response_error(with(response(), "error", json!("e".repeat(1025))), "error");
    response_error(
        with(response(), "cached_prompt_tokens", json!(-3)),
        "cached_prompt_tokens",
    );
}

#[test]
fn several_bad_fields_are_all_reported_once_each() {
    let value = json!({"request_id": "a b", "timestamp": "soon", "latency_ms": -1, "completion_tokens": "many"});
    let errors = parse_response(&value, now(), &Limits::default()).unwrap_err();
    let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "request_id",
            "timestamp",
            "latency_ms",
            "completion_tokens",
            "finish_reason"
        ]
    );
}

#[test]
fn batch_items_say_which_kind_they_are() {
    let req = with(request(), "type", json!("request"));
    assert!(matches!(
        parse_event(&req, now(), &Limits::default()),
        Ok(Event::Request(_))
    ));
    let resp = with(response(), "type", json!("response"));
    assert!(matches!(
        parse_event(&resp, now(), &Limits::default()),
        Ok(Event::Response(_))
    ));
    let errors = parse_event(
        &with(request(), "type", json!("other")),
        now(),
        &Limits::default(),
    )
    .unwrap_err();
    assert_eq!(errors[0].field, "type");
    let errors = parse_event(&request(), now(), &Limits::default()).unwrap_err();
    assert_eq!(errors[0].field, "type");
    let errors = parse_event(&json!("text"), now(), &Limits::default()).unwrap_err();
    assert_eq!(errors[0].reason, "must be a JSON object");
}

#[test]
fn timestamps_are_written_as_chrono_writes_them() {
    let cases = [
        "2024-05-01T11:59:30Z",
        "2024-05-01T11:59:30.120Z",
        "2024-05-01T11:59:30.000120Z",
        "2024-05-01T11:59:30.000000120Z",
        "0999-01-02T03:04:05.123456789Z",
    ];
    for text in cases {
        let at: DateTime<Utc> = DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc);
        let ours = write_rfc3339(&at, serde_json::value::Serializer).unwrap();
        let chrono = serde_json::to_value(at).unwrap();
        assert_eq!(ours, chrono, "{text}");
        assert_eq!(ours, Value::String(text.to_owned()));
    }
}

proptest::proptest! {
    /// Any timestamp of years 0 to 9999, leap seconds included, is written as chrono writes it.
    #[test]
    fn any_timestamp_is_written_as_chrono_writes_it(
        seconds in -62_167_219_200i64..253_402_300_800,
        nanos in proptest::prop_oneof![
            proptest::prelude::Just(0u32),
            proptest::strategy::Strategy::prop_map(0u32..1_000, |ms| ms * 1_000_000),
            proptest::strategy::Strategy::prop_map(0u32..1_000_000, |us| us * 1_000),
            0u32..1_000_000_000,
        ],
        leap in proptest::prelude::any::<bool>(),
    ) {
        // chrono keeps a leap second as nanoseconds past 10^9 in the second 59 of a minute.
        let (seconds, nanos) = if leap { (seconds - seconds.rem_euclid(60) + 59, nanos + 1_000_000_000) } else { (seconds, nanos) };
        let at = DateTime::from_timestamp(seconds, nanos).unwrap();
        let ours = write_rfc3339(&at, serde_json::value::Serializer).unwrap();
        proptest::prop_assert_eq!(ours, serde_json::to_value(at).unwrap());
    }
}

/// Valid items of both kinds and every kind of invalid one: each field missing, of each wrong
/// type, fields of the other kind, unknown fields.
fn batch_items() -> Vec<Value> {
    let mut items = Vec::new();
    for (kind, base) in [("request", request()), ("response", response())] {
        let base = with(base, "type", json!(kind));
        items.push(base.clone());
        let fields: Vec<String> = base.as_object().unwrap().keys().cloned().collect();
        for field in &fields {
            items.push(without(base.clone(), field));
            for bad in [
                json!(null),
                json!(-1),
                json!(1.5),
                json!("x"),
                json!(""),
                json!([]),
                json!({}),
                json!(true),
            ] {
                items.push(with(base.clone(), field, bad));
            }
        }
        // Fields of the other kind, well and badly typed, and unknown ones.
        for (field, value) in [
            ("latency_ms", json!("slow")),
            ("tenant_id", json!(7)),
            ("prompt_tokens", json!(5)),
            ("extra", json!({"a": 1})),
        ] {
            items.push(with(base.clone(), field, value));
        }
        items.push(with(base.clone(), "metadata", json!({"k": "v"})));
        items.push(with(
            base.clone(),
            "timestamp",
            json!("2024-05-01T13:59:30+02:00"),
        ));
        // Well typed, but refused by the checks: no reason to leave the one-pass reading.
        items.push(with(
            base.clone(),
            "timestamp",
            json!("2020-01-01T00:00:00Z"),
        ));
    }
    items
}

/// The typed fast path must give the same verdict and the same event as the field-by-field
/// reading, for valid items and for every kind of invalid one.
#[test]
fn the_fast_path_never_changes_the_verdict() {
    for item in batch_items() {
        let bytes = serde_json::to_vec(&item).unwrap();
        let fast = parse_event_bytes(&bytes, now(), &Limits::default());
        let slow = parse_event(&item, now(), &Limits::default());
        assert_eq!(fast, slow, "{item}");
        if let Some(kind) = item.get("type").and_then(Value::as_str) {
            let single = match kind {
                "request" => {
                    parse_request_bytes(&bytes, now(), &Limits::default()).map(Event::Request)
                }
                "response" => {
                    parse_response_bytes(&bytes, now(), &Limits::default()).map(Event::Response)
                }
                _ => continue,
            };
            assert_eq!(single, slow, "{item}");
        }
    }
}

#[test]
fn the_optional_call_details_are_read_and_checked() {
    let request = with(request(), "provider", json!("aws.bedrock"));
    let event = parse_request(&request, now(), &Limits::default()).unwrap();
    assert_eq!(event.provider.as_ref().unwrap(), "aws.bedrock");
    let response = with(response(), "cache_creation_tokens", json!(64));
    let response = with(response, "reasoning_tokens", json!(30));
    let response = with(response, "error_type", json!("rate_limit"));
    let response = with(response, "response_model", json!("gpt-4o-2024-08-06"));
    let event = parse_response(&response, now(), &Limits::default()).unwrap();
    assert_eq!(event.cache_creation_tokens, Some(64));
    assert_eq!(event.reasoning_tokens, Some(30));
    assert_eq!(event.failure_type(), Some("rate_limit"));
    assert!(event.is_error(), "a type alone marks the call failed");
    assert_eq!(event.response_model.as_ref().unwrap(), "gpt-4o-2024-08-06");
    // The typed fast path reads the same fields.
    let bytes = serde_json::to_vec(&response).unwrap();
    let fast = parse_response_bytes(&bytes, now(), &Limits::default()).unwrap();
    assert_eq!(fast, event);

    assert_eq!(
        request_error(with(request, "provider", json!("a|b")), "provider"),
        "must not contain '|' or control characters"
    );
    assert_eq!(
        response_error(
            with(response.clone(), "reasoning_tokens", json!(41)),
            "reasoning_tokens"
        ),
        "must not exceed completion_tokens"
    );
    assert_eq!(
        response_error(
            with(response.clone(), "cache_creation_tokens", json!(-1)),
            "cache_creation_tokens"
        ),
        "must not be negative"
    );
    assert_eq!(
        response_error(with(response, "error_type", json!("")), "error_type"),
        "must not be empty"
    );
}

proptest::proptest! {
    /// A batch read in one pass has, item by item, the verdict of reading each item on its own;
    /// and every batch of well-typed events is read in one pass.
    #[test]
    fn a_batch_read_at_once_has_each_items_verdict(
        picks in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 1..24),
        typed_only in proptest::prelude::any::<bool>(),
    ) {
        let typed = |item: &&Value| {
            serde_json::from_value::<AnyEvent>((*item).clone()).ok().and_then(AnyEvent::into_event).is_some()
        };
        // Half the batches from well-typed items only, which a batch mostly is.
        let all: Vec<Value> = batch_items().into_iter().filter(|item| !typed_only || typed(&item)).collect();
        let items: Vec<&Value> = picks.iter().map(|i| &all[i.index(all.len())]).collect();
        let body = serde_json::to_vec(&items).unwrap();
        let each: Vec<_> = items
            .iter()
            .map(|item| parse_event_bytes(&serde_json::to_vec(item).unwrap(), now(), &Limits::default()))
            .collect();
        let mut at_once = Vec::new();
        let read = parse_event_array(&body, now(), &Limits::default(), |kind, verdict| at_once.push((kind, verdict)));
        match read {
            Some(count) => {
                proptest::prop_assert_eq!(count, items.len());
                proptest::prop_assert!(items.iter().all(typed));
                let kinds: Vec<_> = at_once.iter().map(|(kind, _)| *kind).collect();
                let declared: Vec<_> = items
                    .iter()
                    .map(|item| if item["type"] == "request" { EventKind::Request } else { EventKind::Response })
                    .collect();
                proptest::prop_assert_eq!(kinds, declared);
                let verdicts: Vec<_> = at_once.into_iter().map(|(_, verdict)| verdict).collect();
                proptest::prop_assert_eq!(verdicts, each);
            }
            None => proptest::prop_assert!(!items.iter().all(typed), "a batch of typed events read item by item"),
        }
    }
}
