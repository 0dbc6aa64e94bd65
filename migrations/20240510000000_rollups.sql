-- Hourly and daily roll-ups of the one-minute windows, per (tenant, route, model): the same
-- exact sums, merged histograms and breakdowns, kept by the processor in the transaction
-- that writes the minute rows, so a bucket always equals the minute rows it covers. Range
-- queries read these and minute rows only at the ragged edges of their range.
CREATE TABLE IF NOT EXISTS llm_metrics_rollups (
    tenant_id               TEXT        NOT NULL,
    -- 3600 (an hour) or 86400 (a day, UTC).
    bucket_seconds          INTEGER     NOT NULL CHECK (bucket_seconds IN (3600, 86400)),
    bucket_start            TIMESTAMPTZ NOT NULL,
    route                   TEXT        NOT NULL,
    model                   TEXT        NOT NULL,
    requests                BIGINT      NOT NULL DEFAULT 0,
    errors                  BIGINT      NOT NULL DEFAULT 0,
    timeouts                BIGINT      NOT NULL DEFAULT 0,
    completed               BIGINT      NOT NULL DEFAULT 0,
    latency_sum_ms          BIGINT      NOT NULL DEFAULT 0,
    ttft_sum_ms             BIGINT      NOT NULL DEFAULT 0,
    ttft_count              BIGINT      NOT NULL DEFAULT 0,
    prompt_tokens           BIGINT      NOT NULL DEFAULT 0,
    completion_tokens       BIGINT      NOT NULL DEFAULT 0,
    cached_prompt_tokens    BIGINT      NOT NULL DEFAULT 0,
    cache_creation_tokens   BIGINT      NOT NULL DEFAULT 0,
    reasoning_tokens        BIGINT      NOT NULL DEFAULT 0,
    cost_nanos              BIGINT      NOT NULL DEFAULT 0,
    unpriced                BIGINT      NOT NULL DEFAULT 0,
    latency_histogram       BYTEA,
    ttft_histogram          BYTEA,
    providers               JSONB       NOT NULL DEFAULT '{}',
    error_types             JSONB       NOT NULL DEFAULT '{}',
    cost_input_nanos        BIGINT      NOT NULL DEFAULT 0,
    cost_cached_input_nanos BIGINT      NOT NULL DEFAULT 0,
    cost_cache_write_nanos  BIGINT      NOT NULL DEFAULT 0,
    cost_output_nanos       BIGINT      NOT NULL DEFAULT 0,
    cost_reasoning_nanos    BIGINT      NOT NULL DEFAULT 0,
    updated_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A tenant's buckets of one width over a range, in one index range scan.
    PRIMARY KEY (tenant_id, bucket_seconds, bucket_start, route, model)
);

-- Whether every roll-up covers all the minute rows: false until the roll-ups of windows
-- written before this migration are built (`streamlens-admin rollups rebuild`, which the
-- processor also runs at start-up when needed). Until then queries read minute rows only.
CREATE TABLE IF NOT EXISTS rollup_state (
    singleton BOOLEAN     PRIMARY KEY DEFAULT true CHECK (singleton),
    complete  BOOLEAN     NOT NULL,
    built_at  TIMESTAMPTZ
);

INSERT INTO rollup_state (complete, built_at)
SELECT NOT EXISTS (SELECT 1 FROM llm_metrics), now()
ON CONFLICT DO NOTHING;
