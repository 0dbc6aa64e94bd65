-- Five-minute roll-ups beside the hourly and daily ones: a day in 5-minute steps (what a 24-hour
-- chart asks for) reads 288 rows a series instead of 1,440. Roll-ups built before lack them, so
-- they are marked incomplete and rebuilt (the processor does it at start-up); queries read
-- minute rows until then.
ALTER TABLE llm_metrics_rollups DROP CONSTRAINT IF EXISTS llm_metrics_rollups_bucket_seconds_check;
-- Partitions created with a copy of the old check keep it as their own: drop those too.
DO $$
DECLARE
    part REGCLASS;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits
                WHERE inhparent = 'llm_metrics_rollups'::regclass LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS llm_metrics_rollups_bucket_seconds_check',
                       part);
    END LOOP;
END $$;
ALTER TABLE llm_metrics_rollups
    ADD CONSTRAINT llm_metrics_rollups_bucket_seconds_check
    CHECK (bucket_seconds IN (300, 3600, 86400));
UPDATE rollup_state SET complete = NOT EXISTS (SELECT 1 FROM llm_metrics);
