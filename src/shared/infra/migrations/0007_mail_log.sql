-- Mail the SMTP server has accepted, one row per email.send job: a retried job finds its row and returns
-- the recorded result instead of sending again. Removed with its job (retention, clean).
CREATE TABLE mail_log (
    job_id     text PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    message_id text NOT NULL,
    accepted   jsonb NOT NULL,
    refused    jsonb NOT NULL,
    sent_at    timestamptz NOT NULL DEFAULT now()
);
