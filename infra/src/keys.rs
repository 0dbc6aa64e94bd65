//! API keys: each bound to one tenant, stored only as a SHA-256 digest, shown once.
//!
//! A key is 24 random bytes in hex behind the `slk_` prefix. It has the entropy of a secret
//! token, not of a password, so a plain digest is the right storage: nothing to brute-force.
//! Services look keys up through [`KeyCache`], which keeps each answer (found, unknown or
//! revoked) for a short while so a request costs no query; a revocation therefore takes
//! effect within that time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};

use metrics_core::ids::TenantId;
use metrics_core::settings::Env;

pub const PREFIX: &str = "slk_";
/// How many characters of a key listings show: enough to tell keys apart, useless to an attacker.
const SHOWN: usize = PREFIX.len() + 8;
/// Cached answers kept at most; beyond it the cache starts afresh.
const CACHE_ENTRIES: usize = 10_000;

pub fn generate() -> String {
    let mut bytes = [0u8; 24];
    getrandom::getrandom(&mut bytes).expect("the operating system's random source works");
    let mut key = String::from(PREFIX);
    for b in bytes {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

pub fn digest(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// A key as listings show it: never the key itself.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub id: i64,
    pub tenant_id: String,
    pub name: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

fn info(row: &sqlx::postgres::PgRow) -> Result<KeyInfo, sqlx::Error> {
    Ok(KeyInfo {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// Creates a key for `tenant`; the returned string is the only time the key exists in clear.
pub async fn create(
    pool: &PgPool,
    tenant: &str,
    name: &str,
) -> Result<(KeyInfo, String), sqlx::Error> {
    let key = generate();
    let row = sqlx::query(
        "INSERT INTO api_keys (tenant_id, name, prefix, key_hash) VALUES ($1, $2, $3, $4)
         RETURNING id, tenant_id, name, prefix, created_at, revoked_at",
    )
    .bind(tenant)
    .bind(name)
    .bind(&key[..SHOWN])
    .bind(digest(&key))
    .fetch_one(pool)
    .await?;
    Ok((info(&row)?, key))
}

pub async fn list(pool: &PgPool, tenant: Option<&str>) -> Result<Vec<KeyInfo>, sqlx::Error> {
    sqlx::query(
        "SELECT id, tenant_id, name, prefix, created_at, revoked_at FROM api_keys
         WHERE $1::TEXT IS NULL OR tenant_id = $1 ORDER BY tenant_id, id",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?
    .iter()
    .map(info)
    .collect()
}

/// Revokes a key; false if there is no such key or it was revoked already.
pub async fn revoke(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .execute(pool)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Cached answers by key digest: the tenant (`None`: unknown or revoked) and when it was read.
type Answers = HashMap<Vec<u8>, (Option<TenantId>, Instant)>;

/// Key lookups with a short memory.
#[derive(Debug)]
pub struct KeyCache {
    pool: PgPool,
    ttl: Duration,
    entries: Mutex<Answers>,
}

impl KeyCache {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self {
            pool,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The tenant of a live key, `None` for an unknown or revoked one. Keys are made for valid
    /// tenant ids (`streamlens-admin` checks); a row edited by hand to something else acts for
    /// no tenant.
    pub async fn tenant(&self, key: &str) -> Result<Option<TenantId>, sqlx::Error> {
        let hash = digest(key);
        if let Some((tenant, at)) = self.lock().get(&hash) {
            if at.elapsed() < self.ttl {
                return Ok(tenant.clone());
            }
        }
        let tenant: Option<String> = sqlx::query_scalar(
            "SELECT tenant_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await?;
        let tenant = tenant.and_then(|t| match TenantId::parse(t) {
            Ok(tenant) => Some(tenant),
            Err(e) => {
                tracing::warn!(reason = %e, "an API key's tenant is not a valid tenant id; the key is refused");
                None
            }
        });
        let mut entries = self.lock();
        if entries.len() >= CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(hash, (tenant.clone(), Instant::now()));
        Ok(tenant)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Answers> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether a service asks for keys.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Every request acts for the tenant its key is bound to.
    Keys(Arc<KeyCache>),
    /// Local use only: anyone may act for any tenant.
    Disabled,
}

/// Why a request is not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "an API key is required: send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`"
    )]
    Missing,
    #[error("the API key is unknown or revoked")]
    Invalid,
    #[error("cannot check the API key: {0}")]
    Unavailable(#[from] sqlx::Error),
}

/// The authentication settings shared by the HTTP services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthSettings {
    pub enabled: bool,
    pub cache_ttl: Duration,
}

impl AuthSettings {
    /// `AUTH_MODE` (`keys`, the default, or `disabled`) and `API_KEY_CACHE_SECS` (30).
    pub fn from_env(env: &mut Env) -> Self {
        let mode = env.string(&["AUTH_MODE"], "keys");
        if !matches!(mode.as_str(), "keys" | "disabled") {
            env.invalid("AUTH_MODE must be \"keys\" or \"disabled\"");
        }
        Self {
            enabled: mode != "disabled",
            cache_ttl: Duration::from_secs(env.parse(&["API_KEY_CACHE_SECS"], 30)),
        }
    }

    pub fn build(&self, pool: &PgPool) -> Auth {
        if self.enabled {
            Auth::Keys(Arc::new(KeyCache::new(pool.clone(), self.cache_ttl)))
        } else {
            self.build_disabled()
        }
    }

    /// No keys, said loudly.
    pub fn build_disabled(&self) -> Auth {
        tracing::warn!(
            "AUTH_MODE=disabled: no API key is asked for and any caller may act for any \
             tenant. This is for local use only; never expose this service like this."
        );
        Auth::Disabled
    }
}

impl Auth {
    /// The key a request presents: `Authorization: Bearer <key>`, else `X-API-Key`.
    pub fn presented(headers: &HeaderMap) -> Option<&str> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (authorization, api_key) = (header("authorization"), header("x-api-key"));
        authorization
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .or(api_key)
            .map(str::trim)
            .filter(|k| !k.is_empty())
    }

    /// The tenant the caller acts for: `Some` with keys, `None` when auth is disabled.
    pub async fn tenant(&self, presented: Option<&str>) -> Result<Option<TenantId>, AuthError> {
        match self {
            Auth::Disabled => Ok(None),
            Auth::Keys(cache) => {
                let key = presented.ok_or(AuthError::Missing)?;
                match cache.tenant(key).await? {
                    Some(tenant) => Ok(Some(tenant)),
                    None => Err(AuthError::Invalid),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_prefixed_and_digested() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 48, "{a}");
        assert_eq!(digest(&a), digest(&a));
        assert_ne!(digest(&a), digest(&b));
        assert_eq!(digest(&a).len(), 32);
    }

    #[test]
    fn a_key_is_read_from_bearer_or_x_api_key() {
        let presented = |authorization: Option<&str>, api_key: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(v) = authorization {
                headers.insert("authorization", v.parse().unwrap());
            }
            if let Some(v) = api_key {
                headers.insert("x-api-key", v.parse().unwrap());
            }
            Auth::presented(&headers).map(str::to_owned)
        };
        assert_eq!(
            presented(Some("Bearer slk_1"), None).as_deref(),
            Some("slk_1")
        );
        assert_eq!(presented(None, Some("slk_2")).as_deref(), Some("slk_2"));
        assert_eq!(
            presented(Some("Basic xyz"), Some("slk_3")).as_deref(),
            Some("slk_3")
        );
        assert_eq!(presented(Some("Bearer  "), None), None);
        assert_eq!(presented(None, None), None);
    }
}
