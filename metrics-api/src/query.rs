//! Query parameters: parsed and checked in one pass, every bad one named.

use std::collections::HashMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use metrics_core::ids::TenantId;
use metrics_core::tiles::Level;
use metrics_core::validation::FieldError;

/// The width of the buckets a query answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Minute,
    FiveMinutes,
    Hour,
    Day,
}

impl Granularity {
    pub const NAMES: &'static str = "1m, 5m, 1h or 1d";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "1m" => Self::Minute,
            "5m" => Self::FiveMinutes,
            "1h" => Self::Hour,
            "1d" => Self::Day,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Minute => "1m",
            Self::FiveMinutes => "5m",
            Self::Hour => "1h",
            Self::Day => "1d",
        }
    }

    pub fn width(self) -> TimeDelta {
        match self {
            Self::Minute => TimeDelta::minutes(1),
            Self::FiveMinutes => TimeDelta::minutes(5),
            Self::Hour => TimeDelta::hours(1),
            Self::Day => TimeDelta::days(1),
        }
    }

    /// The coarsest stored rows whose buckets each fall inside one bucket of this width.
    pub fn coarsest(self) -> Level {
        match self {
            Self::Minute => Level::Minute,
            Self::FiveMinutes => Level::FiveMinutes,
            Self::Hour => Level::Hour,
            Self::Day => Level::Day,
        }
    }

    /// The start of the bucket `t` falls in (UTC, aligned to the epoch).
    pub fn bucket(self, t: DateTime<Utc>) -> DateTime<Utc> {
        t.duration_trunc(self.width()).unwrap_or(t)
    }
}

/// Which dimensions below the tenant a roll-up keeps apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBy {
    pub route: bool,
    pub model: bool,
}

impl GroupBy {
    pub const ALL: Self = Self {
        route: true,
        model: true,
    };

    /// `route,model` (the default), `route`, `model`, or `tenant` (everything together).
    pub fn parse(s: &str) -> Option<Self> {
        let mut g = Self {
            route: false,
            model: false,
        };
        if s == "tenant" {
            return Some(g);
        }
        for part in s.split(',').map(str::trim) {
            match part {
                "route" => g.route = true,
                "model" => g.model = true,
                _ => return None,
            }
        }
        Some(g)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsQuery {
    /// Absent only when the caller's key says which tenant.
    pub tenant: Option<String>,
    pub route: Option<String>,
    pub model: Option<String>,
    pub limit: i64,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub granularity: Granularity,
    pub group_by: GroupBy,
    pub pricing: Pricing,
}

impl MetricsQuery {
    /// The stored windows themselves, newest first: the original API's answer.
    pub fn is_plain(&self) -> bool {
        self.granularity == Granularity::Minute && self.group_by == GroupBy::ALL
    }

    /// The range a roll-up reads: as given, else the `limit` buckets up to now.
    pub fn range(&self, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let g = self.granularity;
        let to = self.to.unwrap_or_else(|| g.bucket(now) + g.width());
        let from = self.from.unwrap_or_else(|| {
            let buckets = i32::try_from(self.limit).unwrap_or(i32::MAX);
            to - g.width() * buckets
        });
        (from, to)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SummaryQuery {
    pub tenant: Option<String>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub top: usize,
    pub pricing: Pricing,
}

/// Which prices an answer's costs are at: as the processor recorded them (the prices in
/// force at each call), or today's prices of the table the service runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pricing {
    #[default]
    Recorded,
    Current,
}

/// Bounds the parser enforces.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub default_limit: i64,
    pub max_limit: i64,
    /// The widest `to - from` a query may read.
    pub max_range: TimeDelta,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            default_limit: 60,
            max_limit: 1000,
            max_range: TimeDelta::days(400),
        }
    }
}

struct Parser<'a> {
    params: &'a HashMap<String, String>,
    errors: Vec<FieldError>,
}

impl<'a> Parser<'a> {
    fn fail(&mut self, field: &str, reason: impl Into<String>) {
        self.errors.push(FieldError::new(field, reason));
    }

    fn name(&mut self, field: &str) -> Option<String> {
        let v = self.params.get(field)?;
        if v.contains(char::REPLACEMENT_CHARACTER) {
            // What the query string decoder makes of bytes that are not UTF-8: no stored
            // name holds one, and an empty answer would hide the client's encoding bug.
            self.fail(field, "must be valid UTF-8 once percent-decoded");
            return None;
        }
        // Tenant, route and model names follow one rule; asking for a name ingestion refuses
        // (a control character, a NUL Postgres cannot even compare) is the caller's mistake.
        match TenantId::parse(v.as_str()) {
            Ok(_) => Some(v.clone()),
            Err(why) => {
                self.fail(field, why.to_string());
                None
            }
        }
    }

    /// `tenant_id`: required unless `keyed` (the caller's API key names the tenant).
    fn tenant(&mut self, keyed: bool) -> Option<String> {
        let tenant = self.name("tenant_id");
        if tenant.is_none() && !keyed && !self.params.contains_key("tenant_id") {
            self.fail("tenant_id", "is required");
        }
        tenant
    }

    fn time(&mut self, field: &str) -> Option<DateTime<Utc>> {
        let v = self.params.get(field)?;
        match DateTime::parse_from_rfc3339(v) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                self.fail(field, "must be an RFC 3339 time, e.g. 2024-05-01T12:00:00Z");
                None
            }
        }
    }

    fn limit(&mut self, limits: &QueryLimits) -> i64 {
        let Some(v) = self.params.get("limit") else {
            return limits.default_limit;
        };
        match v.parse::<i64>() {
            Ok(n) if (1..=limits.max_limit).contains(&n) => n,
            _ => {
                self.fail(
                    "limit",
                    format!("must be a whole number from 1 to {}", limits.max_limit),
                );
                limits.default_limit
            }
        }
    }

    fn range(
        &mut self,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        limits: &QueryLimits,
    ) {
        if let (Some(f), Some(t)) = (from, to) {
            if f >= t {
                self.fail("from", "must be before `to`");
            } else if t - f > limits.max_range {
                self.fail(
                    "to",
                    format!(
                        "must be at most {} days after `from`",
                        limits.max_range.num_days()
                    ),
                );
            }
        }
    }

    fn pricing(&mut self) -> Pricing {
        match self.params.get("pricing").map(String::as_str) {
            None | Some("recorded") => Pricing::Recorded,
            Some("current") => Pricing::Current,
            Some(_) => {
                self.fail("pricing", "must be `recorded` or `current`");
                Pricing::Recorded
            }
        }
    }

    fn finish<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self.errors)
        }
    }
}

/// Reads `GET /v1/metrics` parameters. `tenant_id` is required unless `keyed` (the caller's
/// key names the tenant).
pub fn metrics(
    params: &HashMap<String, String>,
    keyed: bool,
    limits: &QueryLimits,
) -> Result<MetricsQuery, Vec<FieldError>> {
    let mut p = Parser {
        params,
        errors: Vec::new(),
    };
    let tenant = p.tenant(keyed);
    let route = p.name("route");
    let model = p.name("model");
    let limit = p.limit(limits);
    let from = p.time("from");
    let to = p.time("to");
    p.range(from, to, limits);
    let granularity = match params.get("granularity") {
        None => Granularity::Minute,
        Some(v) => Granularity::parse(v).unwrap_or_else(|| {
            p.fail(
                "granularity",
                format!("must be one of {}", Granularity::NAMES),
            );
            Granularity::Minute
        }),
    };
    let group_by = match params.get("group_by") {
        None => GroupBy::ALL,
        Some(v) => GroupBy::parse(v).unwrap_or_else(|| {
            p.fail(
                "group_by",
                "must be `route,model`, `route`, `model` or `tenant`",
            );
            GroupBy::ALL
        }),
    };
    let pricing = p.pricing();
    p.finish(MetricsQuery {
        tenant,
        route,
        model,
        limit,
        from,
        to,
        granularity,
        group_by,
        pricing,
    })
}

/// `GET /v1/alerts` parameters, read.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertsQuery {
    /// `firing` or `resolved`; `None` for both.
    pub state: Option<&'static str>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub limit: i64,
}

/// Reads `GET /v1/alerts` parameters: transitions made in `[from, to)`, by default the 7 days
/// up to now, at most `limit` (100, at most 1000).
pub fn alerts(
    params: &HashMap<String, String>,
    now: DateTime<Utc>,
) -> Result<AlertsQuery, Vec<FieldError>> {
    let mut p = Parser {
        params,
        errors: Vec::new(),
    };
    let state = match params.get("state").map(String::as_str) {
        None => None,
        Some("firing") => Some("firing"),
        Some("resolved") => Some("resolved"),
        Some(_) => {
            p.fail("state", "must be `firing` or `resolved`");
            None
        }
    };
    let limits = QueryLimits {
        default_limit: 100,
        ..QueryLimits::default()
    };
    let limit = p.limit(&limits);
    let from = p.time("from");
    let to = p.time("to");
    p.range(from, to, &limits);
    // Created this second counts: `to` is exclusive.
    let to = to.unwrap_or(now + TimeDelta::seconds(1));
    p.finish(AlertsQuery {
        state,
        from: from.unwrap_or(to - TimeDelta::days(7)),
        to,
        limit,
    })
}

/// Reads `GET /v1/summary` parameters; the range defaults to the last 24 hours.
pub fn summary(
    params: &HashMap<String, String>,
    keyed: bool,
    limits: &QueryLimits,
    now: DateTime<Utc>,
) -> Result<SummaryQuery, Vec<FieldError>> {
    let mut p = Parser {
        params,
        errors: Vec::new(),
    };
    let tenant = p.tenant(keyed);
    let from = p.time("from");
    let to = p.time("to");
    p.range(from, to, limits);
    let top = match params.get("top") {
        None => 5,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                p.fail("top", "must be a whole number from 1 to 100");
                5
            }
        },
    };
    let pricing = p.pricing();
    let to = to.unwrap_or(now);
    let from = from.unwrap_or(to - TimeDelta::days(1));
    if from >= to && p.errors.is_empty() {
        p.fail("from", "must be before `to`");
    }
    p.finish(SummaryQuery {
        tenant,
        from,
        to,
        top,
        pricing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn alert_queries_default_to_a_week_and_name_every_bad_parameter() {
        let now = "2026-05-08T12:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let q = alerts(&params(&[]), now).unwrap();
        assert_eq!((q.state, q.limit), (None, 100));
        assert_eq!(q.to - q.from, TimeDelta::days(7));
        assert!(q.to > now, "a transition made this second is in");
        let q = alerts(&params(&[("state", "firing"), ("limit", "1000")]), now).unwrap();
        assert_eq!((q.state, q.limit), (Some("firing"), 1000));
        let bad = params(&[
            ("state", "ok"),
            ("limit", "1001"),
            ("from", "2026-05-08T12:00:00Z"),
            ("to", "2026-05-01T00:00:00Z"),
        ]);
        assert_eq!(
            fields(alerts(&bad, now).unwrap_err()),
            ["state", "limit", "from"]
        );
        let bad = params(&[("from", "yesterday")]);
        assert_eq!(fields(alerts(&bad, now).unwrap_err()), ["from"]);
    }

    #[test]
    fn the_original_query_keeps_its_defaults() {
        let q = metrics(
            &params(&[("tenant_id", "acme")]),
            false,
            &QueryLimits::default(),
        )
        .unwrap();
        assert_eq!(q.tenant.as_deref(), Some("acme"));
        assert_eq!(q.limit, 60);
        assert!(q.is_plain());
        assert_eq!((q.route, q.model, q.from, q.to), (None, None, None, None));
    }

    #[test]
    fn the_tenant_is_required_unless_the_key_names_it() {
        let err = metrics(&params(&[]), false, &QueryLimits::default()).unwrap_err();
        assert_eq!(fields(err), ["tenant_id"]);
        assert!(metrics(&params(&[]), true, &QueryLimits::default()).is_ok());
    }

    #[test]
    fn every_bad_parameter_is_named() {
        let err = metrics(
            &params(&[
                ("tenant_id", ""),
                ("limit", "100000"),
                ("from", "yesterday"),
                ("granularity", "2m"),
                ("group_by", "colour"),
                ("pricing", "tomorrow"),
            ]),
            false,
            &QueryLimits::default(),
        )
        .unwrap_err();
        assert_eq!(
            fields(err),
            [
                "tenant_id",
                "limit",
                "from",
                "granularity",
                "group_by",
                "pricing"
            ]
        );
    }

    #[test]
    fn names_follow_the_rule_ingestion_stores_them_by() {
        let l = QueryLimits::default();
        for bad in ["a\0b", "a|b", "tab\there", "  ", "\u{fffd}"] {
            for field in ["tenant_id", "route", "model"] {
                let err =
                    metrics(&params(&[("tenant_id", "a"), (field, bad)]), false, &l).unwrap_err();
                assert_eq!(fields(err), [field], "{field}={bad:?}");
            }
            let err = summary(&params(&[("tenant_id", bad)]), false, &l, Utc::now()).unwrap_err();
            assert_eq!(fields(err), ["tenant_id"], "{bad:?}");
        }
        let q = metrics(
            &params(&[
                ("tenant_id", "acme corp"),
                ("route", "/v1/chat"),
                ("model", "gpt-4o"),
            ]),
            false,
            &l,
        )
        .unwrap();
        assert_eq!(q.model.as_deref(), Some("gpt-4o"));
    }

    #[test]
    fn limits_and_ranges_are_bounded() {
        let l = QueryLimits::default();
        for bad in ["0", "-1", "1001", "ten", "1.5"] {
            let err =
                metrics(&params(&[("tenant_id", "a"), ("limit", bad)]), false, &l).unwrap_err();
            assert_eq!(fields(err), ["limit"], "{bad}");
        }
        assert_eq!(
            metrics(&params(&[("tenant_id", "a"), ("limit", "1000")]), false, &l)
                .unwrap()
                .limit,
            1000
        );
        let backwards = params(&[
            ("tenant_id", "a"),
            ("from", "2024-05-02T00:00:00Z"),
            ("to", "2024-05-01T00:00:00Z"),
        ]);
        assert_eq!(
            fields(metrics(&backwards, false, &l).unwrap_err()),
            ["from"]
        );
        let huge = params(&[
            ("tenant_id", "a"),
            ("from", "2020-01-01T00:00:00Z"),
            ("to", "2024-05-01T00:00:00Z"),
        ]);
        assert_eq!(fields(metrics(&huge, false, &l).unwrap_err()), ["to"]);
        let long_name = "r".repeat(256);
        assert_eq!(
            fields(
                metrics(
                    &params(&[("tenant_id", "a"), ("route", &long_name)]),
                    false,
                    &l
                )
                .unwrap_err()
            ),
            ["route"]
        );
        // `%C3%28` is not UTF-8; the decoder leaves U+FFFD in its place.
        assert_eq!(
            fields(
                metrics(
                    &params(&[("tenant_id", "a"), ("model", "gpt\u{FFFD}(")]),
                    false,
                    &l
                )
                .unwrap_err()
            ),
            ["model"]
        );
    }

    #[test]
    fn granularities_and_groupings_parse() {
        for (s, g) in [
            ("1m", Granularity::Minute),
            ("5m", Granularity::FiveMinutes),
            ("1h", Granularity::Hour),
            ("1d", Granularity::Day),
        ] {
            assert_eq!(Granularity::parse(s), Some(g));
            assert_eq!(g.name(), s);
        }
        assert_eq!(
            GroupBy::parse("model"),
            Some(GroupBy {
                route: false,
                model: true
            })
        );
        assert_eq!(GroupBy::parse("model,route"), Some(GroupBy::ALL));
        assert_eq!(
            GroupBy::parse("tenant"),
            Some(GroupBy {
                route: false,
                model: false
            })
        );
        assert_eq!(GroupBy::parse(""), None);
    }

    #[test]
    fn buckets_align_to_the_granularity() {
        let t: DateTime<Utc> = "2024-05-01T13:47:31Z".parse().unwrap();
        assert_eq!(
            Granularity::FiveMinutes.bucket(t),
            "2024-05-01T13:45:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            Granularity::Hour.bucket(t),
            "2024-05-01T13:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            Granularity::Day.bucket(t),
            "2024-05-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn a_roll_up_without_a_range_reads_the_last_limit_buckets() {
        let q = metrics(
            &params(&[("tenant_id", "a"), ("granularity", "5m"), ("limit", "12")]),
            false,
            &QueryLimits::default(),
        )
        .unwrap();
        let now: DateTime<Utc> = "2024-05-01T13:47:31Z".parse().unwrap();
        let (from, to) = q.range(now);
        assert_eq!(to, "2024-05-01T13:50:00Z".parse::<DateTime<Utc>>().unwrap());
        assert_eq!(to - from, TimeDelta::hours(1));
    }

    #[test]
    fn a_summary_defaults_to_the_last_day() {
        let now: DateTime<Utc> = "2024-05-01T13:47:31Z".parse().unwrap();
        let s = summary(
            &params(&[("tenant_id", "a")]),
            false,
            &QueryLimits::default(),
            now,
        )
        .unwrap();
        assert_eq!((s.to - s.from, s.top), (TimeDelta::days(1), 5));
        let err = summary(
            &params(&[("tenant_id", "a"), ("top", "0")]),
            false,
            &QueryLimits::default(),
            now,
        )
        .unwrap_err();
        assert_eq!(fields(err), ["top"]);
    }
}
