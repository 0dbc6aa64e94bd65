-- Per-minute metrics per tenant/route/model, with the columns of the original StreamLens.
CREATE TABLE IF NOT EXISTS llm_metrics (
    id                    BIGSERIAL PRIMARY KEY,
    tenant_id             TEXT             NOT NULL,
    route                 TEXT             NOT NULL,
    model                 TEXT             NOT NULL,
    window_start          TIMESTAMPTZ      NOT NULL,
    window_end            TIMESTAMPTZ      NOT NULL,
    requests              BIGINT           NOT NULL DEFAULT 0,
    errors                BIGINT           NOT NULL DEFAULT 0,
    avg_latency_ms        DOUBLE PRECISION NOT NULL DEFAULT 0,
    p95_latency_ms        DOUBLE PRECISION NOT NULL DEFAULT 0,
    avg_prompt_tokens     DOUBLE PRECISION NOT NULL DEFAULT 0,
    avg_completion_tokens DOUBLE PRECISION NOT NULL DEFAULT 0,
    estimated_cost_usd    DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at            TIMESTAMPTZ      NOT NULL DEFAULT now(),
    CONSTRAINT llm_metrics_window_key UNIQUE (tenant_id, route, model, window_start)
);

CREATE INDEX IF NOT EXISTS llm_metrics_tenant_window_idx
    ON llm_metrics (tenant_id, window_start DESC);
-- Retention prunes by age across all tenants.
CREATE INDEX IF NOT EXISTS llm_metrics_window_start_idx
    ON llm_metrics (window_start);
