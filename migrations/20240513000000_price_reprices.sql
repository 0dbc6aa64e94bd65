-- One row per re-pricing of stored windows (`streamlens-admin prices reprice`): who ran it,
-- when, under which price table, over which windows, and the totals before and after. Each
-- day's transaction adds its part, so a run cut short still says exactly what it changed.
CREATE TABLE IF NOT EXISTS price_reprices (
    id              BIGSERIAL   PRIMARY KEY,
    actor           TEXT        NOT NULL,
    -- The digest of the effective price table (built-in prices and the operator's file).
    table_version   TEXT        NOT NULL,
    -- NULL: every tenant.
    tenant_id       TEXT,
    range_from      TIMESTAMPTZ NOT NULL,
    range_to        TIMESTAMPTZ NOT NULL,
    started_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- NULL while running, or when the run was cut short.
    finished_at     TIMESTAMPTZ,
    windows         BIGINT      NOT NULL DEFAULT 0,
    changed         BIGINT      NOT NULL DEFAULT 0,
    old_cost_nanos  BIGINT      NOT NULL DEFAULT 0,
    new_cost_nanos  BIGINT      NOT NULL DEFAULT 0,
    old_unpriced    BIGINT      NOT NULL DEFAULT 0,
    new_unpriced    BIGINT      NOT NULL DEFAULT 0
);
