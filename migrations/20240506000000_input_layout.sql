-- The partition count of each input topic that a consumer group's stored state was built on.
-- Adding partitions to a live input topic moves keys to other partitions, so a request and its
-- response can end up in different partitions; the processor refuses to go on when the count
-- it finds differs from the one stored here.
CREATE TABLE IF NOT EXISTS processor_layout (
    consumer_group TEXT        NOT NULL,
    topic          TEXT        NOT NULL,
    partitions     INTEGER     NOT NULL CHECK (partitions > 0),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic)
);
