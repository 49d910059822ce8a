-- The fair share of a queue's slots (shared.fair_share) reads, every control interval, which owners have due
-- jobs waiting on a queue (a loose scan: one probe per owner, however many jobs each has queued) and how
-- many jobs each owner runs there.
CREATE INDEX jobs_queue_owner_waiting_idx ON jobs (queue, owner, scheduled_for)
    WHERE status IN ('queued', 'scheduled', 'retrying');
CREATE INDEX jobs_queue_owner_running_idx ON jobs (queue, owner) WHERE status = 'running';
