-- Recurring jobs. Exactly one job per (schedule, fire time) is guaranteed by schedule_runs' key, not by
-- timing: however many scheduler processes run, a second insert of the same fire time does nothing.
CREATE TABLE schedules (
    id          text PRIMARY KEY,
    owner       text NOT NULL,
    name        text NOT NULL,
    cron        text NOT NULL,
    timezone    text NOT NULL,
    job         jsonb NOT NULL,
    start_at    timestamptz,
    end_at      timestamptz,
    enabled     boolean NOT NULL DEFAULT true,
    overlap     text NOT NULL DEFAULT 'allow' CHECK (overlap IN ('allow', 'skip_if_running')),
    next_run_at timestamptz,
    last_run_at timestamptz,
    last_job_id text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (owner, name)
);
CREATE INDEX schedules_due_idx ON schedules (next_run_at) WHERE enabled;

CREATE TABLE schedule_runs (
    schedule_id text NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    fire_time   timestamptz NOT NULL,
    job_id      text,
    PRIMARY KEY (schedule_id, fire_time)
);
