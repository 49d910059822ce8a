-- The queue-flood guard counts an owner's waiting jobs on every submission, bounded at the cap + 1:
-- this partial index holds only waiting rows, so the count is an index-only range scan of at most that many.
CREATE INDEX jobs_owner_waiting_idx ON jobs (owner) WHERE status IN ('queued', 'scheduled', 'retrying');
