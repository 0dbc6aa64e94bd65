-- Raised by every merge into a window row and carried by its llm.metrics record, so that a
-- consumer keeping the last record per key can tell the newest content (and the processor
-- publishes revisions of a row in order).
ALTER TABLE llm_metrics ADD COLUMN IF NOT EXISTS revision BIGINT NOT NULL DEFAULT 0;
