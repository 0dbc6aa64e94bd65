//! Alert rules and their evaluation, as pure functions: a rule as a tenant writes it (checked,
//! every bad field named), and the verdict on the merged minutes of its window given the state
//! before (`ok` or `firing`), with hysteresis so a value at the threshold does not flap.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::aggregate::Aggregate;
use crate::ids::TenantId;
use crate::validation::FieldError;

/// What a rule watches over its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Errors per request, 0 to 1.
    ErrorRate,
    /// Timed-out requests per request, 0 to 1.
    TimeoutRate,
    P95LatencyMs,
    P99LatencyMs,
    /// The cost of the window's calls, as recorded.
    CostUsd,
    /// Requests (paired and timed out).
    Requests,
}

impl Metric {
    pub const NAMES: &'static str =
        "error_rate, timeout_rate, p95_latency_ms, p99_latency_ms, cost_usd or requests";

    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::ErrorRate => "error_rate",
            Metric::TimeoutRate => "timeout_rate",
            Metric::P95LatencyMs => "p95_latency_ms",
            Metric::P99LatencyMs => "p99_latency_ms",
            Metric::CostUsd => "cost_usd",
            Metric::Requests => "requests",
        }
    }

    /// The metric's value over the merged minutes of a window.
    pub fn value(self, a: &Aggregate) -> f64 {
        let rate = |part: u64| {
            if a.requests == 0 {
                0.0
            } else {
                part as f64 / a.requests as f64
            }
        };
        match self {
            Metric::ErrorRate => rate(a.errors),
            Metric::TimeoutRate => rate(a.timeouts),
            Metric::P95LatencyMs => a.latency_quantile_ms(0.95) as f64,
            Metric::P99LatencyMs => a.latency_quantile_ms(0.99) as f64,
            Metric::CostUsd => a.cost_nanos as f64 / 1e9,
            Metric::Requests => a.requests as f64,
        }
    }

    fn is_rate(self) -> bool {
        matches!(self, Metric::ErrorRate | Metric::TimeoutRate)
    }
}

/// Fires above (`>`) or below (`<`) the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Above,
    Below,
}

impl Op {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            ">" => Some(Op::Above),
            "<" => Some(Op::Below),
            _ => None,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Op::Above => ">",
            Op::Below => "<",
        }
    }
}

/// A rule's state between evaluations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Ok,
    Firing,
}

impl State {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ok" => Some(State::Ok),
            "firing" => Some(State::Firing),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Firing => "firing",
        }
    }
}

/// How far past the threshold, as a fraction of it, a firing rule's value must come back
/// before it resolves: `error_rate > 0.05` fires above 5% and resolves at 4.5% or less.
pub const HYSTERESIS: f64 = 0.1;

/// What a rule tests, once checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Condition {
    pub metric: Metric,
    pub op: Op,
    pub threshold: f64,
    /// Fewer requests in the window than this: no verdict, the state stays (not for the
    /// `requests` metric itself).
    pub min_requests: u64,
}

/// An evaluation's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// The metric's value; `None` when `min_requests` held the verdict back.
    pub value: Option<f64>,
    /// The state after.
    pub state: State,
    /// `Some` when the state changed: the one event of this transition.
    pub transition: Option<State>,
}

impl Condition {
    /// Judges the merged minutes of the rule's window, given the state before.
    pub fn evaluate(&self, window: &Aggregate, before: State) -> Verdict {
        if self.metric != Metric::Requests && window.requests < self.min_requests {
            return Verdict {
                value: None,
                state: before,
                transition: None,
            };
        }
        let value = self.metric.value(window);
        let t = self.threshold;
        let margin = HYSTERESIS * t.abs();
        let (breached, recovered) = match self.op {
            Op::Above => (value > t, value <= t - margin),
            Op::Below => (value < t, value >= t + margin),
        };
        let state = match before {
            State::Ok if breached => State::Firing,
            State::Firing if recovered => State::Ok,
            same => same,
        };
        Verdict {
            value: Some(value),
            state,
            transition: (state != before).then_some(state),
        }
    }
}

/// The longest window a rule may watch, in minutes (24 hours).
pub const MAX_WINDOW_MINUTES: u32 = 24 * 60;

/// Reads `1m` to `24h` (whole minutes or hours) as minutes.
pub fn parse_window(s: &str) -> Option<u32> {
    let n: u32 = s.get(..s.len().checked_sub(1)?)?.parse().ok()?;
    let minutes = match s.as_bytes().last()? {
        b'm' => n,
        b'h' => n.checked_mul(60)?,
        _ => return None,
    };
    (1..=MAX_WINDOW_MINUTES)
        .contains(&minutes)
        .then_some(minutes)
}

/// A rule as `POST /v1/alerts/rules` takes it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// 1 to 100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// `error_rate`, `timeout_rate`, `p95_latency_ms`, `p99_latency_ms`, `cost_usd` or
    /// `requests`.
    #[schema(
        pattern = "^(error_rate|timeout_rate|p95_latency_ms|p99_latency_ms|cost_usd|requests)$"
    )]
    pub metric: String,
    /// `>` or `<`.
    #[schema(pattern = "^[<>]$")]
    pub op: String,
    /// 0 or more; a rate's at most 1.
    #[schema(minimum = 0)]
    pub threshold: f64,
    /// `1m` to `24h`.
    #[schema(pattern = "^[0-9]{1,4}[mh]$")]
    pub window: String,
    /// Fewer requests in the window: no verdict (default 1).
    #[serde(default = "one")]
    #[schema(minimum = 0)]
    pub min_requests: i64,
    /// Only this route's calls; absent: all.
    pub route: Option<String>,
    /// Only this model's calls; absent: all.
    pub model: Option<String>,
    /// Where transitions are POSTed, if anywhere: http(s), on the operator's allow-list.
    pub webhook_url: Option<String>,
}

fn one() -> i64 {
    1
}

/// A rule, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub condition: Condition,
    pub window_minutes: u32,
    pub route: Option<String>,
    pub model: Option<String>,
    pub webhook_url: Option<String>,
}

impl RuleSpec {
    /// Checks every field, naming each that is wrong; `allowed` says whether a webhook URL
    /// (already known to be http or https) may be called.
    pub fn check(&self, allowed: impl Fn(&str) -> bool) -> Result<Rule, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut fail = |field: &str, reason: &str| errors.push(FieldError::new(field, reason));
        let name = checked_name(&self.name, &mut fail);
        let metric = Metric::parse(&self.metric);
        if metric.is_none() {
            fail("metric", &format!("must be one of {}", Metric::NAMES));
        }
        let op = Op::parse(&self.op);
        if op.is_none() {
            fail("op", "must be `>` or `<`");
        }
        if !self.threshold.is_finite() || self.threshold < 0.0 {
            fail("threshold", "must be a number, 0 or more");
        } else if metric.is_some_and(Metric::is_rate) && self.threshold > 1.0 {
            fail("threshold", "a rate is a fraction from 0 to 1");
        }
        let window = parse_window(&self.window);
        if window.is_none() {
            fail(
                "window",
                "must be whole minutes or hours from `1m` to `24h`, e.g. `5m`",
            );
        }
        if self.min_requests < 0 {
            fail("min_requests", "must be 0 or more");
        }
        check_scope(
            [&self.route, &self.model],
            self.webhook_url.as_deref(),
            allowed,
            &mut fail,
        );
        match (metric, op, window) {
            (Some(metric), Some(op), Some(window_minutes)) if errors.is_empty() => Ok(Rule {
                name: name.to_owned(),
                condition: Condition {
                    metric,
                    op,
                    threshold: self.threshold,
                    min_requests: u64::try_from(self.min_requests).unwrap_or(0),
                },
                window_minutes,
                route: self.route.clone(),
                model: self.model.clone(),
                webhook_url: self.webhook_url.clone(),
            }),
            _ => Err(errors),
        }
    }
}

/// A rule's or objective's name, trimmed; 1 to 100 characters, none of them a control
/// character (Postgres text cannot hold NUL: such a name was a 503, not a 400).
pub(crate) fn checked_name<'a>(name: &'a str, fail: &mut impl FnMut(&str, &str)) -> &'a str {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        fail("name", "must be 1 to 100 characters");
    } else if name.chars().any(char::is_control) {
        fail("name", "must not contain control characters");
    }
    name
}

/// What rules and objectives share: the route and model filters, named as ingestion names
/// them, and a webhook URL that is callable and allowed.
pub(crate) fn check_scope(
    [route, model]: [&Option<String>; 2],
    webhook_url: Option<&str>,
    allowed: impl Fn(&str) -> bool,
    fail: &mut impl FnMut(&str, &str),
) {
    for (field, value) in [("route", route), ("model", model)] {
        if let Some(Err(why)) = value.as_deref().map(TenantId::parse) {
            fail(field, why.0);
        }
    }
    if let Some(url) = webhook_url {
        if !callable(url) {
            fail("webhook_url", "must be an http:// or https:// URL");
        } else if !allowed(url) {
            fail(
                "webhook_url",
                "is not on this service's webhook allow-list (ALERT_WEBHOOK_ALLOWED)",
            );
        }
    }
}

/// Just enough URL syntax to refuse what no HTTP client could call, or could call somewhere
/// else than it seems: http or https, a host after the scheme, no user part
/// (`http://a.example@b.example/` goes to b), no spaces or control characters.
pub(crate) fn callable(url: &str) -> bool {
    let Some(("http" | "https", rest)) = url.split_once("://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    !host.is_empty()
        && !host.starts_with(':')
        && !host.contains('@')
        && url.len() <= 2048
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The operator's webhook allow-list (`ALERT_WEBHOOK_ALLOWED`): URL prefixes, comma-separated.
pub fn allow_list(setting: &str) -> Vec<String> {
    setting
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether `url` starts with one of the allowed prefixes (`scheme://host[:port]`, or longer),
/// compared up to a boundary, so `http://127.0.0.1` allows `http://127.0.0.1:9000/hook` and not
/// `http://127.0.0.1.evil.example/`.
pub fn webhook_allowed(url: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|prefix| {
        url.strip_prefix(prefix.as_str()).is_some_and(|rest| {
            prefix.ends_with('/') || rest.is_empty() || rest.starts_with([':', '/', '?', '#'])
        })
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::aggregate::Cost;
    use crate::events::ResponseEvent;

    fn window(requests: u64, errors: u64) -> Aggregate {
        let mut a = Aggregate::default();
        for i in 0..requests {
            let r: ResponseEvent = serde_json::from_value(serde_json::json!({
                "request_id": "r", "timestamp": "2026-01-01T00:00:00Z",
                "latency_ms": 100 + i, "completion_tokens": 1, "finish_reason": "stop",
                "error": (i < errors).then_some("boom"),
            }))
            .unwrap();
            a.record_paired(1, None, &r, Cost::default());
        }
        a
    }

    fn rule(op: Op, threshold: f64, min_requests: u64) -> Condition {
        Condition {
            metric: Metric::ErrorRate,
            op,
            threshold,
            min_requests,
        }
    }

    #[test]
    fn a_breach_fires_once_and_a_recovery_past_the_margin_resolves_once() {
        let r = rule(Op::Above, 0.2, 10);
        let v = r.evaluate(&window(10, 3), State::Ok);
        assert_eq!(
            (v.state, v.transition),
            (State::Firing, Some(State::Firing))
        );
        assert_eq!(v.value, Some(0.3));
        let v = r.evaluate(&window(10, 3), State::Firing);
        assert_eq!(
            (v.state, v.transition),
            (State::Firing, None),
            "still firing: no event"
        );
        // At the threshold and just under it (within the 10% margin): still firing.
        let v = r.evaluate(&window(100, 20), State::Firing);
        assert_eq!(v.transition, None);
        let v = r.evaluate(&window(100, 19), State::Firing);
        assert_eq!(v.transition, None);
        let v = r.evaluate(&window(100, 18), State::Firing);
        assert_eq!((v.state, v.transition), (State::Ok, Some(State::Ok)));
        // At the threshold exactly, an ok rule does not fire.
        assert_eq!(r.evaluate(&window(100, 20), State::Ok).transition, None);
    }

    #[test]
    fn too_few_requests_give_no_verdict_and_keep_the_state() {
        let r = rule(Op::Above, 0.2, 10);
        for before in [State::Ok, State::Firing] {
            let v = r.evaluate(&window(9, 9), before);
            assert_eq!((v.value, v.state, v.transition), (None, before, None));
        }
        // A traffic-drop rule counts requests whatever min_requests says.
        let drop = Condition {
            metric: Metric::Requests,
            op: Op::Below,
            threshold: 5.0,
            min_requests: 100,
        };
        assert_eq!(drop.evaluate(&window(2, 0), State::Ok).state, State::Firing);
        assert_eq!(
            drop.evaluate(&window(5, 0), State::Firing).state,
            State::Firing
        );
        assert_eq!(drop.evaluate(&window(6, 0), State::Firing).state, State::Ok);
    }

    #[test]
    fn each_metric_reads_its_figure() {
        let w = window(4, 1);
        assert_eq!(Metric::ErrorRate.value(&w), 0.25);
        assert_eq!(Metric::TimeoutRate.value(&w), 0.0);
        assert_eq!(Metric::Requests.value(&w), 4.0);
        assert_eq!(Metric::P99LatencyMs.value(&w), 103.0);
        assert_eq!(Metric::ErrorRate.value(&Aggregate::default()), 0.0);
        assert_eq!(Metric::parse("p95_latency_ms"), Some(Metric::P95LatencyMs));
        assert_eq!(Metric::parse("p90"), None);
    }

    proptest! {
        /// Along any sequence of windows, transitions alternate (firing, resolved, firing…),
        /// each one an actual change of state, and a value held at the threshold never
        /// produces more than one.
        #[test]
        fn transitions_alternate_and_never_flap_at_the_threshold(
            errors in proptest::collection::vec(0u64..=100, 1..60),
            above in any::<bool>(),
        ) {
            let op = if above { Op::Above } else { Op::Below };
            let r = rule(op, 0.3, 1);
            let mut state = State::Ok;
            let mut events = Vec::new();
            for e in &errors {
                let v = r.evaluate(&window(100, *e), state);
                if let Some(t) = v.transition {
                    prop_assert_ne!(t, state);
                    events.push(t);
                }
                state = v.state;
            }
            for pair in events.windows(2) {
                prop_assert_ne!(pair[0], pair[1]);
            }
            prop_assert_eq!(events.first().copied().unwrap_or(State::Firing), State::Firing);
            let mut steady = State::Ok;
            let mut changes = 0;
            for _ in 0..20 {
                let v = r.evaluate(&window(100, 30), steady);
                changes += usize::from(v.transition.is_some());
                steady = v.state;
            }
            prop_assert!(changes <= 1);
        }
    }

    fn spec(json: serde_json::Value) -> RuleSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_name_with_a_control_character_is_refused_not_stored() {
        let allowed = |url: &str| webhook_allowed(url, &["http://127.0.0.1".to_owned()]);
        for name in ["a\u{0}b", "tab\there", "q\u{8}"] {
            let rule = spec(serde_json::json!({
                "name": name, "metric": "error_rate", "op": ">", "threshold": 0.05, "window": "5m"
            }));
            let errors = rule.check(allowed).unwrap_err();
            assert_eq!(errors.len(), 1, "{name:?}: {errors:?}");
            assert_eq!(errors[0].field, "name");
            assert_eq!(errors[0].reason, "must not contain control characters");
        }
    }

    #[test]
    fn every_bad_field_of_a_rule_is_named() {
        let allowed = |url: &str| webhook_allowed(url, &["http://127.0.0.1".to_owned()]);
        let bad = spec(serde_json::json!({
            "name": "", "metric": "latency", "op": ">=", "threshold": -1, "window": "90s",
            "min_requests": -5, "route": "a|b", "model": "m\u{0}",
            "webhook_url": "http://169.254.169.254/latest/meta-data"
        }));
        let fields: Vec<String> = bad
            .check(allowed)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "name",
                "metric",
                "op",
                "threshold",
                "window",
                "min_requests",
                "route",
                "model",
                "webhook_url"
            ]
        );
        let rate = spec(serde_json::json!({
            "name": "x", "metric": "error_rate", "op": ">", "threshold": 5, "window": "5m",
            "webhook_url": "ftp://127.0.0.1/"
        }));
        let fields: Vec<String> = rate
            .check(allowed)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["threshold", "webhook_url"]);
        let good = spec(serde_json::json!({
            "name": "errors on chat", "metric": "error_rate", "op": ">", "threshold": 0.05,
            "window": "1h", "route": "/chat", "webhook_url": "http://127.0.0.1:9000/hook"
        }))
        .check(allowed)
        .unwrap();
        assert_eq!((good.window_minutes, good.condition.min_requests), (60, 1));
    }

    #[test]
    fn windows_run_from_a_minute_to_a_day() {
        assert_eq!(parse_window("1m"), Some(1));
        assert_eq!(parse_window("24h"), Some(1440));
        assert_eq!(parse_window("90m"), Some(90));
        for bad in [
            "", "0m", "25h", "1441m", "5", "5s", "1d", "-1m", "m", "\u{80}", "5\u{e9}", "\u{e9}m",
        ] {
            assert_eq!(parse_window(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_allow_list_matches_whole_hosts() {
        let allowed = [
            "http://127.0.0.1".to_owned(),
            "https://hooks.example.com/".to_owned(),
        ];
        assert!(webhook_allowed("http://127.0.0.1:9000/hook", &allowed));
        assert!(webhook_allowed("http://127.0.0.1/hook", &allowed));
        assert!(!webhook_allowed("http://127.0.0.1.evil.example/", &allowed));
        assert!(!webhook_allowed("http://127.0.0.10/", &allowed));
        assert!(webhook_allowed("https://hooks.example.com/t/1", &allowed));
        assert!(!webhook_allowed("http://hooks.example.com/t/1", &allowed));
        assert!(!webhook_allowed("http://127.0.0.1/", &[]));
        let sneaky = spec(serde_json::json!({
            "name": "x", "metric": "requests", "op": "<", "threshold": 1, "window": "5m",
            "webhook_url": "http://127.0.0.1:80@evil.example/"
        }));
        let allow = |url: &str| webhook_allowed(url, &allowed);
        assert_eq!(sneaky.check(allow).unwrap_err()[0].field, "webhook_url");
    }
}
