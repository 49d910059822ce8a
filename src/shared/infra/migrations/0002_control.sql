-- run_seq fences every outcome write: it grows with each start and never resets, unlike `attempts`,
-- which a manual retry sets back to 0.
ALTER TABLE jobs ADD COLUMN run_seq integer NOT NULL DEFAULT 0;
-- generation names the job in arq: a manual retry starts a new generation, so nothing arq still holds
-- for an earlier one (a result, an abort marker, a run winding down) can touch the new run.
ALTER TABLE jobs ADD COLUMN generation integer NOT NULL DEFAULT 0;

-- Durable queue controls (pause survives a Redis restart).
CREATE TABLE queues (
    name       text PRIMARY KEY,
    paused     boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Queue statistics and bulk operations by queue and status.
CREATE INDEX jobs_queue_status_idx ON jobs (queue, status);
