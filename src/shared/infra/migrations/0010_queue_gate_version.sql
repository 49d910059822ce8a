-- Every pause or resume gets a new version: the copy of the flag in Redis (the queue's start gate) takes a
-- write only from a version at least as new as its own, so a stale copy never undoes a newer pause.
ALTER TABLE queues ADD COLUMN version bigint NOT NULL DEFAULT 0;
