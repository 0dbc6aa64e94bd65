-- The id of the flush that last wrote each position. A flush whose COMMIT went through but
-- whose answer was lost (the connection dropped) is retried with the same id and recognised
-- as written, instead of adding its windows a second time.
ALTER TABLE processor_positions ADD COLUMN IF NOT EXISTS last_flush TEXT;
