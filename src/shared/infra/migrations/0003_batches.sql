-- A batch: its members are jobs with batch_id set; on_complete is enqueued exactly once, when every
-- member is finished (the FOR UPDATE on this row serialises the members that finish last).
CREATE TABLE batches (
    id                 text PRIMARY KEY,
    owner              text NOT NULL,
    total              integer NOT NULL,
    on_complete        jsonb,
    on_complete_job_id text,
    request_id         text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    completed_at       timestamptz
);

CREATE INDEX jobs_batch_idx ON jobs (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX batches_open_idx ON batches (created_at) WHERE completed_at IS NULL;
