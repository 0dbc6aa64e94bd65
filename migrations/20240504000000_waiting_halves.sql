-- Halves still waiting for their partner although the commit's watermark had passed their
-- deadline (read behind the watermark, in an old backlog after an idle spell). Each commit
-- replaces a partition's set; a replay after a restart must not take them for settled.
ALTER TABLE processor_decisions DROP CONSTRAINT IF EXISTS processor_decisions_outcome_check;
ALTER TABLE processor_decisions
    ADD CONSTRAINT processor_decisions_outcome_check
    CHECK (outcome IN ('timeout', 'orphan', 'waiting'));
