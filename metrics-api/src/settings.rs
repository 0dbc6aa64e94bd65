//! Configuration of the query API, read once at start-up.

use std::net::IpAddr;
use std::time::Duration;

use chrono::TimeDelta;
use infra::keys::AuthSettings;
use metrics_core::pricing::PricingTable;
use metrics_core::settings::{Env, SettingsError};

use crate::query::QueryLimits;

#[derive(Debug, Clone)]
pub struct Settings {
    pub host: IpAddr,
    /// `0` picks a free port (tests).
    pub port: u16,
    pub dsn: String,
    pub max_connections: u32,
    pub auth: AuthSettings,
    pub limits: QueryLimits,
    pub request_timeout: Duration,
    /// How long Postgres lets one statement run before cancelling it
    /// (`QUERY_STATEMENT_TIMEOUT_MS`): by default a tenth (at most a second) short of the
    /// request timeout, so that a query too slow to be answered stops in Postgres as well,
    /// before the request's 408, instead of running on with nobody waiting for it.
    pub statement_timeout: Duration,
    /// Origins browsers may call from (`CORS_ALLOWED_ORIGINS`, comma-separated, `*` for any);
    /// empty: no cross-origin access.
    pub cors_origins: Vec<String>,
    pub log_json: bool,
    /// The prices of `pricing=current` answers: `PRICING_FILE` (the processor's file) over
    /// the built-in prices.
    pub pricing: PricingTable,
    /// URL prefixes alert rules' webhooks may go to (`ALERT_WEBHOOK_ALLOWED`, comma-separated);
    /// none by default.
    pub webhook_allowed: Vec<String>,
}

impl Settings {
    pub fn from_env(mut env: Env) -> Result<Self, SettingsError> {
        let e = &mut env;
        let request_timeout = Duration::from_millis(e.parse(&["HTTP_REQUEST_TIMEOUT_MS"], 10_000));
        let margin = (request_timeout / 10).min(Duration::from_secs(1));
        let statement_timeout = Duration::from_millis(e.parse(
            &["QUERY_STATEMENT_TIMEOUT_MS"],
            u64::try_from((request_timeout - margin).as_millis()).unwrap_or(u64::MAX),
        ));
        let mut settings = Self {
            host: e.parse(&["HTTP_HOST"], IpAddr::from([0, 0, 0, 0])),
            port: e.parse(&["HTTP_PORT"], 8081),
            dsn: infra::db::dsn_from_env(e),
            max_connections: e.parse(&["DB_MAX_CONNECTIONS"], 8),
            auth: AuthSettings::from_env(e),
            limits: QueryLimits {
                default_limit: 60,
                max_limit: e.parse(&["QUERY_MAX_LIMIT"], 1000),
                max_range: TimeDelta::days(e.parse(&["QUERY_MAX_RANGE_DAYS"], 400)),
            },
            request_timeout,
            statement_timeout,
            cors_origins: e
                .string(&["CORS_ALLOWED_ORIGINS"], "")
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect(),
            log_json: e.log_json(),
            pricing: PricingTable::default(),
            webhook_allowed: metrics_core::alerts::allow_list(
                &e.string(&["ALERT_WEBHOOK_ALLOWED"], ""),
            ),
        };
        let file = e.raw(&["PRICING_FILE"]).map(|(_, path)| path);
        match PricingTable::load(file.as_deref().map(std::path::Path::new)) {
            Ok(table) => settings.pricing = table,
            Err(err) => e.invalid(format!("PRICING_FILE: {err}")),
        }
        if settings.limits.max_limit < 60 {
            e.invalid("QUERY_MAX_LIMIT must be at least 60, the default limit");
        }
        if settings.statement_timeout.is_zero()
            || settings.statement_timeout > settings.request_timeout
        {
            e.invalid("QUERY_STATEMENT_TIMEOUT_MS must be positive and at most HTTP_REQUEST_TIMEOUT_MS, or a query could run on in Postgres after its request was answered 408");
        }
        if settings.max_connections == 0 {
            e.invalid("DB_MAX_CONNECTIONS must be positive");
        }
        env.finish()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::from_env(Env::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn defaults_and_the_original_names() {
        let s = load(&[("DATABASE_URL", "postgres://x/y")]).unwrap();
        assert_eq!(
            (s.port, s.dsn.as_str(), s.auth.enabled),
            (8081, "postgres://x/y", true)
        );
        let s = load(&[
            ("POSTGRES_DSN", "postgres://a/b"),
            ("HTTP_PORT", "9001"),
            ("AUTH_MODE", "disabled"),
        ])
        .unwrap();
        assert_eq!(
            (s.port, s.dsn.as_str(), s.auth.enabled),
            (9001, "postgres://a/b", false)
        );
    }

    #[test]
    fn statements_stop_before_the_request_times_out() {
        let ms = |s: Settings| {
            (
                s.request_timeout.as_millis(),
                s.statement_timeout.as_millis(),
            )
        };
        assert_eq!(ms(load(&[]).unwrap()), (10_000, 9_000));
        assert_eq!(
            ms(load(&[("HTTP_REQUEST_TIMEOUT_MS", "1500")]).unwrap()),
            (1_500, 1_350)
        );
        let own = load(&[("QUERY_STATEMENT_TIMEOUT_MS", "4000")]).unwrap();
        assert_eq!(ms(own), (10_000, 4_000));
        let text = load(&[("QUERY_STATEMENT_TIMEOUT_MS", "20000")])
            .unwrap_err()
            .to_string();
        assert!(text.contains("QUERY_STATEMENT_TIMEOUT_MS"), "{text}");
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let text = load(&[("AUTH_MODE", "open"), ("QUERY_MAX_LIMIT", "10")])
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("AUTH_MODE") && text.contains("QUERY_MAX_LIMIT"),
            "{text}"
        );
        let s = load(&[(
            "CORS_ALLOWED_ORIGINS",
            "https://a.example, https://b.example",
        )])
        .unwrap();
        assert_eq!(s.cors_origins, ["https://a.example", "https://b.example"]);
    }
}
