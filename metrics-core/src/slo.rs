//! Service level objectives and their burn-rate alerts, as pure functions.
//!
//! An objective says what share of calls must be good over 30 days: "99.5% of calls succeed"
//! (availability: neither an error nor a timeout) or "95% of calls answer in under 800 ms"
//! (latency, counted from the stored histograms, a timed-out call being slow). The error
//! budget is the share that may be bad; a burn rate is how fast a window spends it (1 spends it
//! exactly in 30 days). Alerts follow the multi-window, multi-burn-rate recipe of Google's SRE
//! workbook: *page* when the last hour and the last 5 minutes both burn at 14.4× or more (2% of
//! the month's budget in an hour), *ticket* when the last 6 hours and the last 30 minutes both
//! burn at 6× or more (5% in 6 hours). The short window makes an alert resolve soon after the
//! burning stops.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::aggregate::Aggregate;
use crate::alerts::{check_scope, checked_name, State, Verdict, HYSTERESIS};
use crate::histogram::Latencies;
use crate::validation::FieldError;

/// The period an objective is kept over, and its budget spent, in minutes (30 days).
pub const PERIOD_MINUTES: u32 = 30 * 24 * 60;

/// What makes a call good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Indicator {
    /// Answered without an error and before the request's time-out.
    Availability,
    /// Answered in under this many milliseconds (to within the histograms' 1%, never counting a
    /// slower call as good).
    Latency { under_ms: u64 },
}

/// Good and total calls of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, ToSchema)]
pub struct Calls {
    pub good: u64,
    pub total: u64,
}

impl Calls {
    pub fn bad(self) -> u64 {
        self.total.saturating_sub(self.good)
    }
}

impl Indicator {
    /// The window's good and total calls.
    pub fn calls(self, window: &Aggregate) -> Calls {
        let total = window.requests;
        let good = match self {
            Indicator::Availability => total
                .saturating_sub(window.errors)
                .saturating_sub(window.timeouts),
            Indicator::Latency { under_ms } => count_under(&window.latency, under_ms),
        };
        Calls {
            good: good.min(total),
            total,
        }
    }
}

/// Calls recorded in `histogram` at less than `limit_ms`, counting only whole buckets that lie
/// below it: a bucket straddling the limit (at most 1% wide) counts as slow.
pub fn count_under(histogram: &Latencies, limit_ms: u64) -> u64 {
    let Some(top) = limit_ms.checked_sub(1) else {
        return 0;
    };
    let top = if histogram.highest_equivalent(top) == top {
        top
    } else {
        match histogram.lowest_equivalent(top).checked_sub(1) {
            Some(below) => below,
            None => return 0,
        }
    };
    histogram.count_between(0, top)
}

/// An objective: the indicator and the share of calls that must be good.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Objective {
    pub indicator: Indicator,
    /// Between 0 and 1 exclusive, e.g. 0.995.
    pub target: f64,
}

impl Objective {
    /// The share of calls that may be bad.
    pub fn budget(&self) -> f64 {
        1.0 - self.target
    }

    /// How fast `calls` spend the budget: their bad share over the budget; 0 without calls.
    pub fn burn_rate(&self, calls: Calls) -> f64 {
        if calls.total == 0 {
            0.0
        } else {
            calls.bad() as f64 / calls.total as f64 / self.budget()
        }
    }

    /// The budget left after the period's `calls`: 1 untouched, 0 spent, below 0 overspent.
    pub fn budget_left(&self, calls: Calls) -> f64 {
        1.0 - self.burn_rate(calls)
    }
}

/// Which of the two burn-rate alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Fast burn: someone should look now.
    Page,
    /// Slow burn: someone should look today.
    Ticket,
}

impl Severity {
    pub const ALL: [Severity; 2] = [Severity::Page, Severity::Ticket];

    pub fn name(self) -> &'static str {
        match self {
            Severity::Page => "page",
            Severity::Ticket => "ticket",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s2| s2.name() == s)
    }

    /// The long and the short window, in minutes.
    pub fn windows(self) -> (u32, u32) {
        match self {
            Severity::Page => (60, 5),
            Severity::Ticket => (6 * 60, 30),
        }
    }

    /// The burn rate both windows must reach.
    pub fn factor(self) -> f64 {
        match self {
            Severity::Page => 14.4,
            Severity::Ticket => 6.0,
        }
    }
}

/// Judges a burn-rate alert on its long and short window, given its state before. It fires
/// when both windows burn at the severity's factor or faster, and resolves when either falls
/// below the factor by the [`HYSTERESIS`] margin; with fewer than `min_requests` calls in the
/// short window there is no verdict and the state stays. The value is the lower of the two
/// windows' burn rates (both burn at least this fast).
pub fn evaluate_burn(
    objective: &Objective,
    severity: Severity,
    long: Calls,
    short: Calls,
    min_requests: u64,
    before: State,
) -> Verdict {
    if short.total < min_requests.max(1) {
        return Verdict {
            value: None,
            state: before,
            transition: None,
        };
    }
    let burn = objective.burn_rate(long).min(objective.burn_rate(short));
    let factor = severity.factor();
    let state = match before {
        State::Ok if burn >= factor => State::Firing,
        State::Firing if burn < factor * (1.0 - HYSTERESIS) => State::Ok,
        same => same,
    };
    Verdict {
        value: Some(burn),
        state,
        transition: (state != before).then_some(state),
    }
}

/// An objective as `POST /v1/slos` takes it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SloSpec {
    /// 1 to 100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// `availability` (no error, no time-out) or `latency` (answered in under `threshold_ms`).
    #[schema(pattern = "^(availability|latency)$")]
    pub indicator: String,
    /// The share of calls that must be good over 30 days, e.g. 0.995; above 0 and below 1.
    #[schema(exclusive_minimum = 0, exclusive_maximum = 1)]
    pub target: f64,
    /// For `latency`: the limit in milliseconds, 1 to 3,600,000.
    #[schema(minimum = 1, maximum = 3_600_000)]
    pub threshold_ms: Option<i64>,
    /// Fewer calls in an alert's short window: no verdict (default 10).
    #[serde(default = "ten")]
    #[schema(minimum = 1)]
    pub min_requests: i64,
    /// Only this route's calls; absent: all.
    pub route: Option<String>,
    /// Only this model's calls; absent: all.
    pub model: Option<String>,
    /// Where the burn-rate alerts' transitions are POSTed, if anywhere (as for alert rules).
    pub webhook_url: Option<String>,
}

fn ten() -> i64 {
    10
}

/// An objective, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    pub name: String,
    pub objective: Objective,
    pub min_requests: u64,
    pub route: Option<String>,
    pub model: Option<String>,
    pub webhook_url: Option<String>,
}

impl SloSpec {
    /// Checks every field, naming each that is wrong; `allowed` as for alert rules.
    pub fn check(&self, allowed: impl Fn(&str) -> bool) -> Result<Slo, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut fail = |field: &str, reason: &str| errors.push(FieldError::new(field, reason));
        let name = checked_name(&self.name, &mut fail);
        if !(self.target > 0.0 && self.target < 1.0) {
            fail("target", "must be a share above 0 and below 1, e.g. 0.995");
        }
        let indicator = match (self.indicator.as_str(), self.threshold_ms) {
            ("availability", None) => Some(Indicator::Availability),
            ("availability", Some(_)) => {
                fail("threshold_ms", "is for the `latency` indicator only");
                None
            }
            ("latency", Some(ms)) if (1..=3_600_000).contains(&ms) => Some(Indicator::Latency {
                under_ms: ms.unsigned_abs(),
            }),
            ("latency", Some(_)) => {
                fail("threshold_ms", "must be 1 to 3600000 milliseconds");
                None
            }
            ("latency", None) => {
                fail("threshold_ms", "is required for the `latency` indicator");
                None
            }
            _ => {
                fail("indicator", "must be `availability` or `latency`");
                None
            }
        };
        if self.min_requests < 1 {
            fail("min_requests", "must be 1 or more");
        }
        check_scope(
            [&self.route, &self.model],
            self.webhook_url.as_deref(),
            allowed,
            &mut fail,
        );
        match indicator {
            Some(indicator) if errors.is_empty() => Ok(Slo {
                name: name.to_owned(),
                objective: Objective {
                    indicator,
                    target: self.target,
                },
                min_requests: self.min_requests.unsigned_abs(),
                route: self.route.clone(),
                model: self.model.clone(),
                webhook_url: self.webhook_url.clone(),
            }),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::aggregate::Cost;
    use crate::events::ResponseEvent;

    /// A window of calls at the given latencies, the first `errors` of them failed, and
    /// `timeouts` more that never answered.
    fn window(latencies: &[u64], errors: usize, timeouts: u64) -> Aggregate {
        let mut a = Aggregate::default();
        for (i, ms) in latencies.iter().enumerate() {
            let r: ResponseEvent = serde_json::from_value(serde_json::json!({
                "request_id": "r", "timestamp": "2026-01-01T00:00:00Z",
                "latency_ms": ms, "completion_tokens": 1, "finish_reason": "stop",
                "error": (i < errors).then_some("boom"),
            }))
            .unwrap();
            a.record_paired(1, None, &r, Cost::default());
        }
        for _ in 0..timeouts {
            a.record_timeout(None);
        }
        a
    }

    const AVAILABILITY: Objective = Objective {
        indicator: Indicator::Availability,
        target: 0.99,
    };

    #[test]
    fn availability_counts_errors_and_timeouts_as_bad() {
        let w = window(&[100; 90], 5, 10);
        let calls = Indicator::Availability.calls(&w);
        assert_eq!(
            calls,
            Calls {
                good: 85,
                total: 100
            }
        );
        // 15% bad against a 1% budget: fifteen times too fast.
        assert!((AVAILABILITY.burn_rate(calls) - 15.0).abs() < 1e-9);
        assert!((AVAILABILITY.budget_left(calls) + 14.0).abs() < 1e-9);
        assert_eq!(AVAILABILITY.burn_rate(Calls::default()), 0.0);
        assert_eq!(AVAILABILITY.budget_left(Calls::default()), 1.0);
    }

    #[test]
    fn latency_counts_calls_under_the_limit_and_timeouts_as_slow() {
        let w = window(&[10, 200, 799, 800, 801, 5_000], 0, 1);
        let calls = Indicator::Latency { under_ms: 800 }.calls(&w);
        assert_eq!(calls, Calls { good: 3, total: 7 });
        assert_eq!(count_under(&w.latency, 0), 0);
        assert_eq!(count_under(&w.latency, 11), 1);
    }

    proptest! {
        /// Never a call at or over the limit counted as under it, and never more than 1% of the
        /// limit between the two.
        #[test]
        fn counting_under_a_limit_errs_only_towards_slow(
            latencies in proptest::collection::vec(0u64..200_000, 1..200),
            limit in 1u64..200_000,
        ) {
            let w = window(&latencies, 0, 0);
            let counted = count_under(&w.latency, limit);
            let under = latencies.iter().filter(|&&ms| ms < limit).count() as u64;
            let clearly_under = latencies
                .iter()
                .filter(|&&ms| (ms as f64) < limit as f64 * 0.99 - 1.0)
                .count() as u64;
            prop_assert!(counted <= under, "{counted} > {under}");
            prop_assert!(counted >= clearly_under, "{counted} < {clearly_under}");
        }
    }

    fn calls(bad: u64, total: u64) -> Calls {
        Calls {
            good: total - bad,
            total,
        }
    }

    #[test]
    fn a_page_needs_both_windows_burning() {
        // 99% target: 1% budget; 14.4× is 14.4% bad.
        let page = |long, short, before| {
            evaluate_burn(&AVAILABILITY, Severity::Page, long, short, 10, before)
        };
        let v = page(calls(150, 1000), calls(20, 100), State::Ok);
        assert_eq!(
            (v.state, v.transition),
            (State::Firing, Some(State::Firing))
        );
        assert!(
            (v.value.unwrap() - 15.0).abs() < 1e-9,
            "the lower of the two"
        );
        // A short burst: the hour is fine.
        let v = page(calls(20, 1000), calls(100, 100), State::Ok);
        assert_eq!(v.transition, None);
        // The burning stopped: the hour is still over, the last 5 minutes are not.
        let v = page(calls(150, 1000), calls(0, 100), State::Firing);
        assert_eq!((v.state, v.transition), (State::Ok, Some(State::Ok)));
        // Just under the factor, within the margin: still firing.
        let v = page(calls(140, 1000), calls(14, 100), State::Firing);
        assert_eq!(v.transition, None);
        // Too few calls in the short window: no verdict.
        let v = page(calls(500, 1000), calls(9, 9), State::Ok);
        assert_eq!((v.value, v.transition), (None, None));
    }

    #[test]
    fn a_ticket_burns_slower_over_longer_windows() {
        assert_eq!(Severity::Ticket.windows(), (360, 30));
        let v = evaluate_burn(
            &AVAILABILITY,
            Severity::Ticket,
            calls(70, 1000),
            calls(7, 100),
            10,
            State::Ok,
        );
        assert_eq!(v.state, State::Firing);
        let v = evaluate_burn(
            &AVAILABILITY,
            Severity::Page,
            calls(70, 1000),
            calls(7, 100),
            10,
            State::Ok,
        );
        assert_eq!(v.state, State::Ok, "7× is not a page");
    }

    proptest! {
        /// Along any sequence of windows, burn-rate transitions alternate and a steady burn at
        /// the factor makes at most one.
        #[test]
        fn burn_transitions_alternate(
            bad in proptest::collection::vec((0u64..=300, 0u64..=30), 1..60),
        ) {
            let mut state = State::Ok;
            let mut last = None;
            for (long_bad, short_bad) in bad {
                let v = evaluate_burn(
                    &AVAILABILITY, Severity::Page,
                    calls(long_bad, 1000), calls(short_bad, 100), 10, state,
                );
                if let Some(t) = v.transition {
                    prop_assert_ne!(Some(t), last);
                    prop_assert_ne!(t, state);
                    last = Some(t);
                }
                state = v.state;
            }
            let mut steady = State::Ok;
            let mut changes = 0;
            for _ in 0..20 {
                let v = evaluate_burn(
                    &AVAILABILITY, Severity::Page,
                    calls(144, 1000), calls(15, 100), 10, steady,
                );
                changes += usize::from(v.transition.is_some());
                steady = v.state;
            }
            prop_assert!(changes <= 1);
        }
    }

    fn spec(json: serde_json::Value) -> SloSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn every_bad_field_of_an_objective_is_named() {
        let allowed = |_: &str| false;
        let fields = |s: SloSpec| -> Vec<String> {
            s.check(allowed)
                .unwrap_err()
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(
            fields(spec(serde_json::json!({
                "name": " ", "indicator": "uptime", "target": 1.0, "min_requests": 0,
                "route": "a|b", "model": "", "webhook_url": "http://10.0.0.1/"
            }))),
            [
                "name",
                "target",
                "indicator",
                "min_requests",
                "route",
                "model",
                "webhook_url"
            ]
        );
        assert_eq!(
            fields(spec(serde_json::json!({
                "name": "fast", "indicator": "latency", "target": 0.95
            }))),
            ["threshold_ms"]
        );
        assert_eq!(
            fields(spec(serde_json::json!({
                "name": "up", "indicator": "availability", "target": 0.0, "threshold_ms": 5
            }))),
            ["target", "threshold_ms"]
        );
        let good = spec(serde_json::json!({
            "name": "fast chat", "indicator": "latency", "target": 0.95, "threshold_ms": 800,
            "route": "/chat"
        }))
        .check(allowed)
        .unwrap();
        assert_eq!(
            good.objective.indicator,
            Indicator::Latency { under_ms: 800 }
        );
        assert_eq!(good.min_requests, 10);
    }
}
