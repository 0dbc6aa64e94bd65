-- Service level objectives per tenant. Each has two burn-rate alerts (page and ticket), kept
-- as alert rules of its own (`slo_id`, `severity`), so their state, transitions and deliveries
-- are those of every alert rule; `GET /v1/alerts/rules` lists only the rules tenants made.
CREATE TABLE IF NOT EXISTS slos (
    id            BIGSERIAL        PRIMARY KEY,
    tenant_id     TEXT             NOT NULL,
    name          TEXT             NOT NULL,
    indicator     TEXT             NOT NULL CHECK (indicator IN ('availability', 'latency')),
    target        DOUBLE PRECISION NOT NULL CHECK (target > 0 AND target < 1),
    threshold_ms  BIGINT           CHECK ((indicator = 'latency') = (threshold_ms IS NOT NULL)),
    min_requests  BIGINT           NOT NULL DEFAULT 10,
    route         TEXT,
    model         TEXT,
    webhook_url   TEXT,
    created_at    TIMESTAMPTZ      NOT NULL DEFAULT now(),
    deleted_at    TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS slos_tenant_idx ON slos (tenant_id) WHERE deleted_at IS NULL;

ALTER TABLE alert_rules
    ADD COLUMN IF NOT EXISTS slo_id   BIGINT REFERENCES slos (id),
    ADD COLUMN IF NOT EXISTS severity TEXT CHECK (severity IN ('page', 'ticket')),
    ADD CONSTRAINT alert_rules_slo_severity CHECK ((slo_id IS NULL) = (severity IS NULL));
