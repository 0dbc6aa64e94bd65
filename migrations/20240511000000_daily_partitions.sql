-- Windows and roll-ups partitioned by UTC day (declarative range partitioning on their start),
-- so retention drops whole partitions instead of deleting rows, and a range query reads only
-- the days it covers. Each table gets a default partition, so a write for a day without a
-- partition of its own still succeeds; streamlens_ensure_partitions moves such rows into the
-- day's partition when it creates it. The processor creates partitions ahead of need.
--
-- Existing rows are copied into the new tables in this migration (minutes for a table of
-- millions of rows); the `id` column, which nothing reads, is not kept: a window is named by
-- its primary key (tenant_id, route, model, window_start).

ALTER TABLE llm_metrics RENAME TO llm_metrics_unpartitioned;
ALTER INDEX llm_metrics_pkey RENAME TO llm_metrics_unpartitioned_pkey;
ALTER TABLE llm_metrics_unpartitioned
    RENAME CONSTRAINT llm_metrics_window_key TO llm_metrics_unpartitioned_window_key;
DROP INDEX IF EXISTS llm_metrics_tenant_window_idx, llm_metrics_window_start_idx,
    llm_metrics_unpublished_idx;

CREATE TABLE llm_metrics (
    tenant_id               TEXT             NOT NULL,
    route                   TEXT             NOT NULL,
    model                   TEXT             NOT NULL,
    window_start            TIMESTAMPTZ      NOT NULL,
    window_end              TIMESTAMPTZ      NOT NULL,
    requests                BIGINT           NOT NULL DEFAULT 0,
    errors                  BIGINT           NOT NULL DEFAULT 0,
    avg_latency_ms          DOUBLE PRECISION NOT NULL DEFAULT 0,
    p95_latency_ms          DOUBLE PRECISION NOT NULL DEFAULT 0,
    avg_prompt_tokens       DOUBLE PRECISION NOT NULL DEFAULT 0,
    avg_completion_tokens   DOUBLE PRECISION NOT NULL DEFAULT 0,
    estimated_cost_usd      DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at              TIMESTAMPTZ      NOT NULL DEFAULT now(),
    timeouts                BIGINT           NOT NULL DEFAULT 0,
    completed               BIGINT           NOT NULL DEFAULT 0,
    latency_sum_ms          BIGINT           NOT NULL DEFAULT 0,
    ttft_sum_ms             BIGINT           NOT NULL DEFAULT 0,
    ttft_count              BIGINT           NOT NULL DEFAULT 0,
    prompt_tokens           BIGINT           NOT NULL DEFAULT 0,
    completion_tokens       BIGINT           NOT NULL DEFAULT 0,
    cached_prompt_tokens    BIGINT           NOT NULL DEFAULT 0,
    cost_nanos              BIGINT           NOT NULL DEFAULT 0,
    unpriced                BIGINT           NOT NULL DEFAULT 0,
    p50_latency_ms          DOUBLE PRECISION NOT NULL DEFAULT 0,
    p99_latency_ms          DOUBLE PRECISION NOT NULL DEFAULT 0,
    max_latency_ms          DOUBLE PRECISION NOT NULL DEFAULT 0,
    avg_ttft_ms             DOUBLE PRECISION,
    latency_histogram       BYTEA,
    ttft_histogram          BYTEA,
    updated_at              TIMESTAMPTZ      NOT NULL DEFAULT now(),
    published_at            TIMESTAMPTZ,
    revision                BIGINT           NOT NULL DEFAULT 0,
    cache_creation_tokens   BIGINT           NOT NULL DEFAULT 0,
    reasoning_tokens        BIGINT           NOT NULL DEFAULT 0,
    providers               JSONB            NOT NULL DEFAULT '{}',
    error_types             JSONB            NOT NULL DEFAULT '{}',
    cost_input_nanos        BIGINT           NOT NULL DEFAULT 0,
    cost_cached_input_nanos BIGINT           NOT NULL DEFAULT 0,
    cost_cache_write_nanos  BIGINT           NOT NULL DEFAULT 0,
    cost_output_nanos       BIGINT           NOT NULL DEFAULT 0,
    cost_reasoning_nanos    BIGINT           NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, route, model, window_start)
) PARTITION BY RANGE (window_start);

CREATE INDEX llm_metrics_tenant_window_idx ON llm_metrics (tenant_id, window_start DESC);
CREATE INDEX llm_metrics_unpublished_idx
    ON llm_metrics (updated_at) WHERE published_at IS DISTINCT FROM updated_at;
CREATE TABLE llm_metrics_default PARTITION OF llm_metrics DEFAULT;

ALTER TABLE llm_metrics_rollups RENAME TO llm_metrics_rollups_unpartitioned;
ALTER INDEX llm_metrics_rollups_pkey RENAME TO llm_metrics_rollups_unpartitioned_pkey;
CREATE TABLE llm_metrics_rollups (LIKE llm_metrics_rollups_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    PRIMARY KEY (tenant_id, bucket_seconds, bucket_start, route, model)
) PARTITION BY RANGE (bucket_start);
CREATE TABLE llm_metrics_rollups_default PARTITION OF llm_metrics_rollups DEFAULT;

-- Creates, for every UTC day from `first` to `last`, the partitions of both tables it does not
-- have yet, each after moving into it the rows the default partition held for that day.
-- Returns how many it created. One caller at a time (a transaction-level advisory lock).
CREATE OR REPLACE FUNCTION streamlens_ensure_partitions(first DATE, last DATE)
RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    day     DATE := first;
    made    INTEGER := 0;
    parent  TEXT;
    part    TEXT;
    keycol  TEXT;
    lower   TIMESTAMPTZ;
    upper   TIMESTAMPTZ;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('streamlens.partitions'));
    WHILE day <= last LOOP
        lower := day::timestamp AT TIME ZONE 'UTC';
        upper := (day + 1)::timestamp AT TIME ZONE 'UTC';
        FOREACH parent IN ARRAY ARRAY['llm_metrics', 'llm_metrics_rollups'] LOOP
            part := parent || '_p' || to_char(day, 'YYYYMMDD');
            IF to_regclass(part) IS NULL THEN
                keycol := CASE parent WHEN 'llm_metrics' THEN 'window_start' ELSE 'bucket_start' END;
                -- First the default partition, whole: a commit writing to it finishes first,
                -- and none starts until the day's rows have moved.
                EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', parent || '_default');
                EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                               part, parent);
                EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= %L AND %I < %L RETURNING *)
                                INSERT INTO %I SELECT * FROM moved',
                               parent || '_default', keycol, lower, keycol, upper, part);
                EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                               parent, part, lower, upper);
                made := made + 1;
            END IF;
        END LOOP;
        day := day + 1;
    END LOOP;
    RETURN made;
END $$;

-- Drops the daily partitions of both tables for days before `before`, and deletes what the
-- default partitions hold from before it. Returns how many partitions it dropped.
CREATE OR REPLACE FUNCTION streamlens_drop_partitions_before(before DATE)
RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    dropped INTEGER := 0;
    part    TEXT;
    cutoff  TIMESTAMPTZ := before::timestamp AT TIME ZONE 'UTC';
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('streamlens.partitions'));
    FOR part IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent IN ('llm_metrics'::regclass, 'llm_metrics_rollups'::regclass)
          AND c.relname ~ '_p[0-9]{8}$'
          AND to_date(right(c.relname, 8), 'YYYYMMDD') < before
    LOOP
        EXECUTE format('DROP TABLE %I', part);
        dropped := dropped + 1;
    END LOOP;
    DELETE FROM llm_metrics_default WHERE window_start < cutoff;
    DELETE FROM llm_metrics_rollups_default WHERE bucket_start < cutoff;
    RETURN dropped;
END $$;

-- Partitions for every day the existing rows cover, then the rows themselves.
SELECT streamlens_ensure_partitions(
    LEAST((SELECT min(window_start) FROM llm_metrics_unpartitioned),
          (SELECT min(bucket_start) FROM llm_metrics_rollups_unpartitioned),
          now())::date,
    GREATEST((SELECT max(window_start) FROM llm_metrics_unpartitioned),
             (SELECT max(bucket_start) FROM llm_metrics_rollups_unpartitioned),
             now())::date + 2);

INSERT INTO llm_metrics (tenant_id, route, model, window_start, window_end, requests, errors,
    avg_latency_ms, p95_latency_ms, avg_prompt_tokens, avg_completion_tokens,
    estimated_cost_usd, created_at, timeouts, completed, latency_sum_ms, ttft_sum_ms,
    ttft_count, prompt_tokens, completion_tokens, cached_prompt_tokens, cost_nanos, unpriced,
    p50_latency_ms, p99_latency_ms, max_latency_ms, avg_ttft_ms, latency_histogram,
    ttft_histogram, updated_at, published_at, revision, cache_creation_tokens,
    reasoning_tokens, providers, error_types, cost_input_nanos, cost_cached_input_nanos,
    cost_cache_write_nanos, cost_output_nanos, cost_reasoning_nanos)
SELECT tenant_id, route, model, window_start, window_end, requests, errors,
    avg_latency_ms, p95_latency_ms, avg_prompt_tokens, avg_completion_tokens,
    estimated_cost_usd, created_at, timeouts, completed, latency_sum_ms, ttft_sum_ms,
    ttft_count, prompt_tokens, completion_tokens, cached_prompt_tokens, cost_nanos, unpriced,
    p50_latency_ms, p99_latency_ms, max_latency_ms, avg_ttft_ms, latency_histogram,
    ttft_histogram, updated_at, published_at, revision, cache_creation_tokens,
    reasoning_tokens, providers, error_types, cost_input_nanos, cost_cached_input_nanos,
    cost_cache_write_nanos, cost_output_nanos, cost_reasoning_nanos
FROM llm_metrics_unpartitioned;

INSERT INTO llm_metrics_rollups SELECT * FROM llm_metrics_rollups_unpartitioned;

DROP TABLE llm_metrics_unpartitioned;
DROP TABLE llm_metrics_rollups_unpartitioned;
