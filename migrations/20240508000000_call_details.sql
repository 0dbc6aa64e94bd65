-- What OpenTelemetry GenAI spans (and the JSON events' optional fields) report beyond the
-- original figures: exact sums of cache-write and reasoning tokens, and counts per provider
-- and per error type, all adding up when partial windows merge.
ALTER TABLE llm_metrics
    ADD COLUMN IF NOT EXISTS cache_creation_tokens BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS reasoning_tokens      BIGINT NOT NULL DEFAULT 0,
    -- {"openai": 12, "anthropic": 3}: requests per provider, for requests that name one.
    ADD COLUMN IF NOT EXISTS providers             JSONB  NOT NULL DEFAULT '{}',
    -- {"rate_limit": 2, "_OTHER": 1}: errors per type, adding up to errors.
    ADD COLUMN IF NOT EXISTS error_types           JSONB  NOT NULL DEFAULT '{}';
