-- Roll-ups per model (routes merged), per route (models merged) and per tenant beside the
-- per-series ones, the merged side holding '' (names are never blank): an answer per model
-- reads one row per model and bucket instead of one per series. Roll-ups built before lack
-- them, so they are marked incomplete and rebuilt (the processor does it at start-up);
-- queries read minute rows until then.
UPDATE rollup_state SET complete = NOT EXISTS (SELECT 1 FROM llm_metrics);
