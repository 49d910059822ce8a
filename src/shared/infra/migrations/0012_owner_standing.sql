-- Work that runs later as its owner (a schedule's fires, a batch's on_complete) re-checks the owner's
-- standing when it runs: `created_with_key` is the API key it was created with (NULL: a JWT, whose
-- principal Conveyor cannot look up later).
ALTER TABLE schedules ADD COLUMN created_with_key text;
ALTER TABLE batches ADD COLUMN created_with_key text;
-- Why Conveyor turned a schedule off (`owner_revoked`, `owner_not_allowed`); cleared when it is enabled again.
ALTER TABLE schedules ADD COLUMN disabled_reason text;
-- The last fire time that made no job, and why (`queue_cap`, `overlap`, `invalid_job`, `error`).
ALTER TABLE schedules ADD COLUMN last_skipped_at timestamptz;
ALTER TABLE schedules ADD COLUMN last_skip_reason text;
-- The standing check reads an owner's live keys.
CREATE INDEX api_keys_live_sub_idx ON api_keys (sub) WHERE revoked_at IS NULL;
