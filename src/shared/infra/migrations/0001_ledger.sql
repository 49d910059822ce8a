-- The durable ledger: one row per job; Redis is only the transport.
CREATE TABLE jobs (
    id              text PRIMARY KEY,
    type            text NOT NULL,
    queue           text NOT NULL,
    owner           text NOT NULL,
    status          text NOT NULL CHECK (status IN
                        ('queued', 'scheduled', 'running', 'retrying', 'succeeded', 'failed', 'cancelled')),
    priority        text NOT NULL DEFAULT 'normal' CHECK (priority IN ('low', 'normal', 'high')),
    payload         jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL,
    timeout_s       double precision NOT NULL,
    result          jsonb,
    error           jsonb,
    error_history   jsonb NOT NULL DEFAULT '[]'::jsonb,
    batch_id        text,
    idempotency_key text,
    request_hash    text,
    request_id      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    scheduled_for   timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Listing newest first, per owner and overall, with keyset pagination on (created_at, id).
CREATE INDEX jobs_owner_created_idx ON jobs (owner, created_at DESC, id DESC);
CREATE INDEX jobs_created_idx ON jobs (created_at DESC, id DESC);
-- The reconciler scans only unfinished jobs.
CREATE INDEX jobs_unfinished_idx ON jobs (updated_at)
    WHERE status IN ('queued', 'scheduled', 'running', 'retrying');
CREATE UNIQUE INDEX jobs_idempotency_idx ON jobs (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
