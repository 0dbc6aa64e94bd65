-- What merging partial windows needs: sums and counts behind every average, the serialized
-- histograms behind every percentile, and the other figures of a window.
ALTER TABLE llm_metrics
    ADD COLUMN timeouts             BIGINT           NOT NULL DEFAULT 0,
    ADD COLUMN completed            BIGINT           NOT NULL DEFAULT 0,
    ADD COLUMN latency_sum_ms       BIGINT           NOT NULL DEFAULT 0,
    ADD COLUMN ttft_sum_ms          BIGINT           NOT NULL DEFAULT 0,
    ADD COLUMN ttft_count           BIGINT           NOT NULL DEFAULT 0,
    ADD COLUMN prompt_tokens        BIGINT           NOT NULL DEFAULT 0,
    ADD COLUMN completion_tokens    BIGINT           NOT NULL DEFAULT 0,
    ADD COLUMN cached_prompt_tokens BIGINT           NOT NULL DEFAULT 0,
    ADD COLUMN cost_nanos           BIGINT           NOT NULL DEFAULT 0,
    ADD COLUMN unpriced             BIGINT           NOT NULL DEFAULT 0,
    ADD COLUMN p50_latency_ms       DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN p99_latency_ms       DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN max_latency_ms       DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN avg_ttft_ms          DOUBLE PRECISION,
    ADD COLUMN latency_histogram    BYTEA,
    ADD COLUMN ttft_histogram       BYTEA,
    ADD COLUMN updated_at           TIMESTAMPTZ      NOT NULL DEFAULT now(),
    -- Set to updated_at once the row went to llm.metrics; rows where they differ are due.
    ADD COLUMN published_at         TIMESTAMPTZ;

CREATE INDEX IF NOT EXISTS llm_metrics_unpublished_idx
    ON llm_metrics (updated_at) WHERE published_at IS DISTINCT FROM updated_at;

-- Where each consumer group stands on each input partition, written in the same transaction
-- as the window rows it produced.
CREATE TABLE IF NOT EXISTS processor_positions (
    consumer_group TEXT        NOT NULL,
    topic          TEXT        NOT NULL,
    partition      INTEGER     NOT NULL,
    -- The next offset consumed when the rows were written.
    position       BIGINT      NOT NULL,
    -- The oldest offset still needed: where a new owner resumes reading.
    resume         BIGINT      NOT NULL,
    -- The watermark whose closed windows that commit wrote.
    watermark      TIMESTAMPTZ,
    -- Raised by each new owner; a commit from an older owner finds it changed and fails.
    epoch          BIGINT      NOT NULL DEFAULT 0,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Timeouts and orphans already counted, so that a replay does not count them again. Rows
-- below a partition's resume offset are never consulted and are deleted.
CREATE TABLE IF NOT EXISTS processor_decisions (
    consumer_group TEXT        NOT NULL,
    topic          TEXT        NOT NULL,
    partition      INTEGER     NOT NULL,
    request_id     TEXT        NOT NULL,
    outcome        TEXT        NOT NULL CHECK (outcome IN ('timeout', 'orphan')),
    record_offset  BIGINT      NOT NULL,
    event_time     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition, request_id, outcome)
);
