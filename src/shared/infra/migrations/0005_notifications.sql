-- In-app notifications, written by `notification.push` jobs. `job_id` is unique so a job that runs again
-- (a retry after its insert committed, a duplicate delivery) finds its notification instead of adding one.
-- Not a foreign key: finished jobs are purged after RETENTION_DAYS, their notifications are kept.
CREATE TABLE notifications (
    id         text PRIMARY KEY,
    owner      text NOT NULL,
    title      text NOT NULL,
    body       text NOT NULL DEFAULT '',
    kind       text NOT NULL DEFAULT 'info',
    job_id     text UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    read_at    timestamptz
);
-- A user's inbox, newest first; the partial one serves `?unread=true` without walking read rows.
CREATE INDEX notifications_owner_idx ON notifications (owner, created_at DESC, id DESC);
CREATE INDEX notifications_owner_unread_idx ON notifications (owner, created_at DESC, id DESC) WHERE read_at IS NULL;
-- An admin's list of everyone's.
CREATE INDEX notifications_created_idx ON notifications (created_at DESC, id DESC);
