-- The prompt and completion tokens of the calls counted as unpriced (`unpriced`), so what
-- the cost leaves out is visible in tokens as well as calls.
ALTER TABLE llm_metrics ADD COLUMN IF NOT EXISTS unpriced_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE llm_metrics_rollups ADD COLUMN IF NOT EXISTS unpriced_tokens BIGINT NOT NULL DEFAULT 0;

-- Windows written before: every call of a window had one price or none (one model, one
-- minute), so a window whose every completed call is unpriced has all its tokens unpriced.
-- Where only some were (processors ran different price tables within that minute), the
-- calls' share of the tokens.
UPDATE llm_metrics
SET unpriced_tokens = (prompt_tokens + completion_tokens)::NUMERIC * unpriced / completed
WHERE unpriced > 0 AND completed > 0;

-- Their roll-ups: the sum of the minute rows they cover.
UPDATE llm_metrics_rollups AS r
SET unpriced_tokens = m.tokens
FROM (
    SELECT tenant_id, route, model, b.seconds,
           to_timestamp(floor(extract(epoch FROM window_start) / b.seconds) * b.seconds) AS start,
           sum(unpriced_tokens) AS tokens
    FROM llm_metrics, (VALUES (300), (3600), (86400)) AS b(seconds)
    WHERE unpriced_tokens > 0
    GROUP BY tenant_id, route, model, b.seconds, start
) AS m
WHERE r.tenant_id = m.tenant_id AND r.route = m.route AND r.model = m.model
  AND r.bucket_seconds = m.seconds AND r.bucket_start = m.start;
