-- Alert rules per tenant, their state, and the transitions they made.
CREATE TABLE IF NOT EXISTS alert_rules (
    id              BIGSERIAL        PRIMARY KEY,
    tenant_id       TEXT             NOT NULL,
    name            TEXT             NOT NULL,
    metric          TEXT             NOT NULL,
    op              TEXT             NOT NULL CHECK (op IN ('>', '<')),
    threshold       DOUBLE PRECISION NOT NULL,
    window_minutes  INTEGER          NOT NULL CHECK (window_minutes BETWEEN 1 AND 1440),
    min_requests    BIGINT           NOT NULL DEFAULT 1,
    route           TEXT,
    model           TEXT,
    webhook_url     TEXT,
    created_at      TIMESTAMPTZ      NOT NULL DEFAULT now(),
    -- A deleted rule is kept (its events name it) but no longer evaluated.
    deleted_at      TIMESTAMPTZ,
    -- Where the rule stands: evaluations of windows ending before `evaluated_end` (a lagging
    -- instance) are ignored, so a rule only moves forward in time.
    state           TEXT             NOT NULL DEFAULT 'ok' CHECK (state IN ('ok', 'firing')),
    value           DOUBLE PRECISION,
    evaluated_end   TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS alert_rules_tenant_idx ON alert_rules (tenant_id) WHERE deleted_at IS NULL;

-- The key webhooks of a tenant are signed with (HMAC-SHA256), shown once, when the tenant's
-- first rule is created.
CREATE TABLE IF NOT EXISTS alert_secrets (
    tenant_id   TEXT        PRIMARY KEY,
    secret      TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per transition, written in the transaction that changes the rule's state, so each
-- transition is recorded once; then delivered to llm.alerts and the rule's webhook.
CREATE TABLE IF NOT EXISTS alert_events (
    id              BIGSERIAL        PRIMARY KEY,
    tenant_id       TEXT             NOT NULL,
    rule_id         BIGINT           NOT NULL REFERENCES alert_rules (id),
    state           TEXT             NOT NULL CHECK (state IN ('firing', 'resolved')),
    value           DOUBLE PRECISION NOT NULL,
    threshold       DOUBLE PRECISION NOT NULL,
    window_start    TIMESTAMPTZ      NOT NULL,
    window_end      TIMESTAMPTZ      NOT NULL,
    created_at      TIMESTAMPTZ      NOT NULL DEFAULT now(),
    published_at    TIMESTAMPTZ,
    -- Webhook delivery: delivered, or given up after `attempts` (dead-lettered), or due again
    -- at `next_attempt_at`. No webhook: delivered_at stays NULL and next_attempt_at too.
    delivered_at    TIMESTAMPTZ,
    dead_at         TIMESTAMPTZ,
    attempts        INTEGER          NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS alert_events_tenant_idx ON alert_events (tenant_id, created_at DESC);
CREATE INDEX IF NOT EXISTS alert_events_unpublished_idx ON alert_events (id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS alert_events_due_idx ON alert_events (next_attempt_at)
    WHERE delivered_at IS NULL AND dead_at IS NULL AND next_attempt_at IS NOT NULL;
