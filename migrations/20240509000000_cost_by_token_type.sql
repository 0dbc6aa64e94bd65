-- A window's cost split by token type, each an exact sum of per-call nano-dollars; together
-- they make cost_nanos. Windows written before the split keep zeros here.
ALTER TABLE llm_metrics
    ADD COLUMN IF NOT EXISTS cost_input_nanos        BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS cost_cached_input_nanos BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS cost_cache_write_nanos  BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS cost_output_nanos       BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS cost_reasoning_nanos    BIGINT NOT NULL DEFAULT 0;
