-- Uploads and artifacts: the bytes live under STORAGE_DIR (`path` is relative to it), the ledger says whose
-- they are. An artifact belongs to the job that produced it: one per job_id, so a re-run replaces the row's
-- file and keeps its id. No foreign key to jobs: an artifact outlives the retention of its job's row.
CREATE TABLE files (
    id           text PRIMARY KEY,
    owner        text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('upload', 'artifact')),
    size         bigint NOT NULL CHECK (size >= 0),
    sha256       text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    content_type text NOT NULL,
    filename     text NOT NULL,
    path         text NOT NULL,
    job_id       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'artifact') = (job_id IS NOT NULL))
);
CREATE UNIQUE INDEX files_artifact_job_key ON files (job_id) WHERE kind = 'artifact';
-- Newest-first lists: a user's own (owner, kind, …), an admin's everyone's (kind, …).
CREATE INDEX files_owner_idx ON files (owner, kind, created_at DESC, id DESC);
CREATE INDEX files_kind_idx ON files (kind, created_at DESC, id DESC);
