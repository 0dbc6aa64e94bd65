-- API keys, each bound to one tenant. Only the SHA-256 digest of a key is stored; `prefix`
-- is its first characters, for telling keys apart in listings.
CREATE TABLE IF NOT EXISTS api_keys (
    id         BIGSERIAL   PRIMARY KEY,
    tenant_id  TEXT        NOT NULL,
    name       TEXT        NOT NULL DEFAULT '',
    prefix     TEXT        NOT NULL,
    key_hash   BYTEA       NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ
);

CREATE INDEX IF NOT EXISTS api_keys_tenant_idx ON api_keys (tenant_id);
