//! What the processor takes from the raw input topics.
//!
//! The ingestion API validated its own records already, but other producers write to these
//! topics too, and a replay must read an old record the way it was read the first time. So
//! only what makes a record unusable is refused, whatever its age: it cannot be parsed, a
//! number is out of the range window sums are built for, it is stamped far ahead of the time
//! it was written to the topic (such a half would wait that long for its partner and hold
//! the resume position back all the while), or its window is older than the retention (it
//! would bring back a row the retention already dropped). The future is measured from the
//! record's own Kafka timestamp, not the clock, so a replay decides as the first read did.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use metrics_core::events::Event;
use metrics_core::validation::{self, FieldError, Limits};

use super::offsets::Input;

/// The largest `latency_ms` or `time_to_first_token_ms` taken from a raw topic: a day.
pub const MAX_LATENCY_MS: u64 = 86_400_000;

/// How far ahead of its record's Kafka timestamp an event may be stamped.
pub const MAX_FUTURE: TimeDelta = TimeDelta::hours(1);

/// Why a record goes to the dead-letter topic instead of the join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Invalid(Vec<FieldError>),
    /// The record's window lies before the retention horizon.
    BeyondRetention {
        window: DateTime<Utc>,
    },
}

impl Refused {
    /// The `dlq.kind` header.
    pub fn kind(&self) -> &'static str {
        match self {
            Refused::Invalid(_) => "invalid",
            Refused::BeyondRetention { .. } => "beyond_retention",
        }
    }

    /// The `dlq.reason` header: every failing field and why.
    pub fn reason(&self, retention: TimeDelta) -> String {
        match self {
            Refused::Invalid(fields) => fields
                .iter()
                .map(|f| {
                    let field = if f.field.is_empty() {
                        "record"
                    } else {
                        &f.field
                    };
                    format!("{field}: {}", f.reason)
                })
                .collect::<Vec<_>>()
                .join("; "),
            Refused::BeyondRetention { window } => format!(
                "timestamp: its window ({}) is older than the retention of {} days",
                window.to_rfc3339(),
                retention.num_days()
            ),
        }
    }
}

/// Parses one record of `input`, written to its topic at `written` (its Kafka timestamp;
/// the clock when it has none) and read at `now`, with windows kept for `retention`.
pub fn parse(
    input: Input,
    payload: &[u8],
    written: DateTime<Utc>,
    now: DateTime<Utc>,
    retention: TimeDelta,
) -> Result<Event, Refused> {
    let limits = Limits {
        max_future_skew: MAX_FUTURE,
        max_age: TimeDelta::days(365 * 100),
        max_latency_ms: MAX_LATENCY_MS,
    };
    let event = match input {
        Input::Requests => {
            validation::parse_request_bytes(payload, written, &limits).map(Event::Request)
        }
        Input::Responses => {
            validation::parse_response_bytes(payload, written, &limits).map(Event::Response)
        }
    }
    .map_err(Refused::Invalid)?;
    let timestamp = match &event {
        Event::Request(r) => r.timestamp,
        Event::Response(r) => r.timestamp,
    };
    let window = timestamp
        .duration_trunc(TimeDelta::minutes(1))
        .unwrap_or(timestamp);
    if window < now - retention {
        return Err(Refused::BeyondRetention { window });
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-05-01T12:00:30Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn response(latency: &str, at: &str) -> Vec<u8> {
        format!(
            r#"{{"request_id":"r1","timestamp":"{at}","latency_ms":{latency},"completion_tokens":3,"finish_reason":"stop"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn a_latency_no_window_sum_can_hold_is_refused_naming_the_field() {
        let refused = parse(
            Input::Responses,
            &response("18446744073709551615", "2026-05-01T12:00:00Z"),
            now(),
            now(),
            TimeDelta::days(30),
        )
        .unwrap_err();
        assert_eq!(refused.kind(), "invalid");
        let reason = refused.reason(TimeDelta::days(30));
        assert!(
            reason.contains("latency_ms: must be at most 86400000"),
            "{reason}"
        );
        assert!(parse(
            Input::Responses,
            &response("86400000", "2026-05-01T12:00:00Z"),
            now(),
            now(),
            TimeDelta::days(30)
        )
        .is_ok());
    }

    #[test]
    fn token_counts_beyond_the_bound_are_refused() {
        let request = br#"{"request_id":"r1","tenant_id":"t","route":"/","model":"m","timestamp":"2026-05-01T12:00:00Z","prompt_tokens":18446744073709551615}"#;
        let refused =
            parse(Input::Requests, request, now(), now(), TimeDelta::days(30)).unwrap_err();
        assert!(refused
            .reason(TimeDelta::days(30))
            .contains("prompt_tokens"));
    }

    #[test]
    fn a_record_whose_window_is_older_than_the_retention_is_refused_as_beyond_retention() {
        let retention = TimeDelta::days(1);
        // The horizon is 12:00:30 the day before: retention drops the 12:00 window (it starts
        // before the horizon) and keeps 12:01.
        let kept = response("10", "2026-04-30T12:01:05Z");
        assert!(parse(Input::Responses, &kept, now(), now(), retention).is_ok());
        let dropped = response("10", "2026-04-30T12:00:40Z");
        let refused = parse(Input::Responses, &dropped, now(), now(), retention).unwrap_err();
        assert_eq!(refused.kind(), "beyond_retention");
        assert!(refused
            .reason(retention)
            .contains("older than the retention of 1 days"));
    }

    #[test]
    fn the_future_is_measured_from_the_records_kafka_timestamp_not_the_clock() {
        let stamped = response("10", "2026-05-01T14:00:00Z");
        let written = now();
        let refused = parse(
            Input::Responses,
            &stamped,
            written,
            now(),
            TimeDelta::days(30),
        )
        .unwrap_err();
        assert!(
            refused.reason(TimeDelta::days(30)).starts_with("timestamp"),
            "{refused:?}"
        );
        // Read again two hours later, in a replay: still refused, as at the first read.
        let later = now() + TimeDelta::hours(2);
        assert!(parse(
            Input::Responses,
            &stamped,
            written,
            later,
            TimeDelta::days(30)
        )
        .is_err());
        let soon = response("10", "2026-05-01T12:50:00Z");
        assert!(parse(Input::Responses, &soon, written, now(), TimeDelta::days(30)).is_ok());
    }
}
