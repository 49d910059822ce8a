"""The ledger's queries: the durable record of every job, written before a job is acknowledged."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from shared.core import json
from shared.core.errors import Conflict
from shared.core.status import FINISHED
from shared.infra import pages
from shared.infra.db import Connection, Pool

IDEMPOTENCY_WINDOW = dt.timedelta(hours=24)
# A job keeps the errors of its last this many attempts: manual retries start its attempts again, so without
# a bound its history (each message up to 2,000 characters) would grow with every retry, and so would every
# read of the job.
ERROR_HISTORY_MAX = 100
_LAST_ERRORS = f"$[last - {ERROR_HISTORY_MAX - 1} to last]"


def new_job_id() -> str:
    return "job_" + secrets.token_urlsafe(18)


def arq_id(job_id: str, generation: int) -> str:
    """A job's id in arq: the ledger id, suffixed with the generation after a manual retry."""
    return job_id if generation == 0 else f"{job_id}.{generation}"


@dataclass(frozen=True, slots=True)
class NewJob:
    id: str
    type: str
    queue: str
    owner: str
    priority: str
    payload: dict[str, Any]
    max_attempts: int
    timeout_s: float
    scheduled_for: dt.datetime
    expires_at: dt.datetime | None
    idempotency_key: str | None
    request_hash: str | None
    request_id: str | None
    status: str = "queued"
    batch_id: str | None = None


@dataclass(frozen=True, slots=True)
class JobSummary:
    """A job without its payload, result and per-attempt errors: what a list shows and what a stream
    re-checks. A payload may be MAX_BODY_BYTES and a result RESULT_MAX_BYTES of JSON, each tens of times
    larger once decoded, so neither is read unless one job is asked for."""

    id: str
    type: str
    queue: str
    owner: str
    status: str
    priority: str
    attempts: int
    max_attempts: int
    timeout_s: float
    error: dict[str, Any] | None
    batch_id: str | None
    idempotency_key: str | None
    created_at: dt.datetime
    scheduled_for: dt.datetime
    expires_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    updated_at: dt.datetime
    generation: int

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> JobSummary:
        return cls(**dict(row.items()))


@dataclass(frozen=True, slots=True)
class JobRecord(JobSummary):
    """A whole job row: its summary and the large or internal fields (payload, result, error history)."""

    payload: dict[str, Any]
    result: Any
    error_history: list[dict[str, Any]]
    request_hash: str | None
    request_id: str | None
    run_seq: int

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> JobRecord:
        return cls(**dict(row.items()))

    @property
    def terminal(self) -> bool:
        return self.status in FINISHED

    def summary(self) -> JobSummary:
        """Its summary as a plain JobSummary (what a stream compares with a re-read one)."""
        return JobSummary(**{column: getattr(self, column) for column in SUMMARY_COLUMNS})

    @property
    def arq_id(self) -> str:
        return arq_id(self.id, self.generation)


SUMMARY_COLUMNS = pages.columns_of(JobSummary)
_SUMMARY_SELECT = ", ".join(SUMMARY_COLUMNS)

_INSERT = """
INSERT INTO jobs (id, type, queue, owner, status, priority, payload, max_attempts, timeout_s,
                  scheduled_for, expires_at, idempotency_key, request_hash, request_id, batch_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING *
"""


async def insert_job(conn: Connection | Pool, job: NewJob) -> tuple[JobRecord, bool]:
    """Record a job; with an idempotency key, return the owner's earlier job instead when there is one.

    Returns:
        The record and whether this call created it.

    Raises:
        Conflict: the key was used within 24 h for a different request.
    """
    args = (
        job.id, job.type, job.queue, job.owner, job.status, job.priority, job.payload, job.max_attempts,
        job.timeout_s, job.scheduled_for, job.expires_at, job.idempotency_key, job.request_hash, job.request_id,
        job.batch_id,
    )  # fmt: skip
    for _ in range(3):
        row = await conn.fetchrow(_INSERT, *args)
        if row is not None:
            return JobRecord.from_row(row), True
        # ON CONFLICT waited for the other writer to commit, so its row is visible to this new statement.
        earlier = await conn.fetchrow(
            "SELECT * FROM jobs WHERE owner = $1 AND idempotency_key = $2", job.owner, job.idempotency_key
        )
        if earlier is None:
            continue  # deleted in between (cleaned); insert again
        record = JobRecord.from_row(earlier)
        if record.created_at < json.utcnow() - IDEMPOTENCY_WINDOW:
            # Out of the window: free the key and record this request as a new job.
            await conn.execute("UPDATE jobs SET idempotency_key = NULL WHERE id = $1", record.id)
            continue
        if record.request_hash != job.request_hash:
            raise Conflict(
                "this idempotency key was already used with a different request",
                details={"job_id": record.id},
            )
        return record, False
    raise Conflict("the idempotency key is contended; try again")


async def get_job(conn: Connection | Pool, job_id: str) -> JobRecord | None:
    row = await conn.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
    return None if row is None else JobRecord.from_row(row)


@dataclass(frozen=True, slots=True)
class JobFilter:
    owner: str | None = None
    status: str | None = None
    type: str | None = None
    queue: str | None = None
    batch_id: str | None = None


async def get_summary(conn: Connection | Pool, job_id: str) -> JobSummary | None:
    """The job without its large columns: enough to tell whether anything a client sees has changed."""
    row = await conn.fetchrow(f"SELECT {_SUMMARY_SELECT} FROM jobs WHERE id = $1", job_id)  # noqa: S608 - names from code
    return None if row is None else JobSummary.from_row(row)


async def list_jobs(
    conn: Connection | Pool, where: JobFilter, *, limit: int, cursor: str | None
) -> tuple[list[JobSummary], str | None]:
    """Newest first, keyset-paginated on (created_at, id); summaries only (a page never reads a payload)."""
    equal = {c: getattr(where, c) for c in ("owner", "status", "type", "queue", "batch_id")}
    return await pages.newest_first(
        conn, "jobs", JobSummary.from_row, equal=equal, limit=limit, cursor=cursor, columns=SUMMARY_COLUMNS
    )


# --- worker-side transitions -----------------------------------------------------------------------
# Every transition after `mark_running` is fenced on run_seq (one per start, never reset), so a late
# finisher of an older run can never overwrite the outcome of a newer one, even after a manual retry.


async def mark_running(conn: Connection | Pool, job_id: str, generation: int) -> JobRecord | None:
    """Start the next attempt; the ledger, not arq, counts attempts (an outage or a shutdown uses none).

    Returns None when the job is already finished (a duplicate delivery), unknown, or was retried since
    this delivery was enqueued (an older generation).
    """
    row = await conn.fetchrow(
        """
        UPDATE jobs SET status = 'running', attempts = attempts + 1, run_seq = run_seq + 1,
                        started_at = now(), updated_at = now()
        WHERE id = $1 AND generation = $2 AND status IN ('queued', 'scheduled', 'running', 'retrying')
        RETURNING *
        """,
        job_id,
        generation,
    )
    return None if row is None else JobRecord.from_row(row)


# The grouped forms of `mark_running` and `mark_succeeded`: one statement for many jobs (see
# `workers.outcomes`), with exactly the single-row answers per item. Each job's row is updated once per
# statement however often it appears, so a repeat of the same job (id and generation, or id and run_seq) in
# one group gets what a second single-row call would get just after the first: nothing. The items are sorted
# by id, and a group's plan walks them in that order (one primary-key probe each), so two groups touching the
# same rows lock them in the same order rather than deadlock.


async def mark_running_many(conn: Connection | Pool, starts: Sequence[tuple[str, int]]) -> list[JobRecord | None]:
    """`mark_running` for many (job id, generation) pairs at once; per pair its record, or None."""
    ordered = sorted(set(starts))
    rows = await conn.fetch(
        """
        UPDATE jobs SET status = 'running', attempts = attempts + 1, run_seq = run_seq + 1,
                        started_at = now(), updated_at = now()
        FROM unnest($1::text[], $2::int[]) AS t(id, generation)
        WHERE jobs.id = t.id AND jobs.generation = t.generation
          AND jobs.status IN ('queued', 'scheduled', 'running', 'retrying')
        RETURNING jobs.*
        """,
        [job_id for job_id, _ in ordered],
        [generation for _, generation in ordered],
    )
    started = {(r["id"], r["generation"]): JobRecord.from_row(r) for r in rows}
    return [started.pop(start, None) for start in starts]


async def mark_succeeded_many(conn: Connection | Pool, outcomes: Sequence[tuple[JobRecord, Any]]) -> list[bool]:
    """`mark_succeeded` for many (run, result) pairs at once, each fenced on its run_seq; per pair whether it
    was recorded. The results go as one jsonb array: asyncpg would read a list inside a jsonb[] as a dimension."""
    first: dict[tuple[str, int], int] = {}
    for i, (run, _) in enumerate(outcomes):
        first.setdefault((run.id, run.run_seq), i)
    ordered = sorted(first.items())
    rows = await conn.fetch(
        """
        UPDATE jobs SET status = 'succeeded', result = r.result, error = NULL, finished_at = now(),
                        updated_at = now()
        FROM unnest($1::text[], $2::int[]) WITH ORDINALITY AS t(id, run_seq, n)
        JOIN jsonb_array_elements($3::jsonb) WITH ORDINALITY AS r(result, n) USING (n)
        WHERE jobs.id = t.id AND jobs.run_seq = t.run_seq AND jobs.status = 'running'
        RETURNING jobs.id, jobs.run_seq
        """,
        [job_id for (job_id, _), _ in ordered],
        [run_seq for (_, run_seq), _ in ordered],
        [outcomes[i][1] for _, i in ordered],
    )
    done = {first[(r["id"], r["run_seq"])] for r in rows}
    return [i in done for i in range(len(outcomes))]


async def mark_expired(conn: Connection | Pool, job_id: str, error: dict[str, Any]) -> bool:
    """Fail a job that was never started and is past its expiry; it never runs."""
    status = await conn.execute(
        """
        UPDATE jobs SET status = 'failed', error = $2, finished_at = now(), updated_at = now()
        WHERE id = $1 AND started_at IS NULL AND status IN ('queued', 'scheduled') AND expires_at < now()
        """,
        job_id,
        error,
    )
    return status.endswith(" 1")


async def mark_succeeded(conn: Connection | Pool, run: JobRecord, result: Any) -> bool:
    status = await conn.execute(
        """
        UPDATE jobs SET status = 'succeeded', result = $3, error = NULL, finished_at = now(), updated_at = now()
        WHERE id = $1 AND run_seq = $2 AND status = 'running'
        """,
        run.id,
        run.run_seq,
        result,
    )
    return status.endswith(" 1")


def error_entry(attempt: int, error: dict[str, Any]) -> dict[str, Any]:
    return {**error, "attempt": attempt, "at": json.rfc3339(json.utcnow())}


async def mark_retrying(conn: Connection | Pool, run: JobRecord, error: dict[str, Any], next_at: dt.datetime) -> bool:
    status = await conn.execute(
        """
        UPDATE jobs SET status = 'retrying', error = $3,
                        error_history = jsonb_path_query_array(error_history || jsonb_build_array($4::jsonb), $6),
                        scheduled_for = $5, updated_at = now()
        WHERE id = $1 AND run_seq = $2 AND status = 'running'
        """,
        run.id,
        run.run_seq,
        error,
        error_entry(run.attempts, error),
        next_at,
        _LAST_ERRORS,
    )
    return status.endswith(" 1")


async def mark_failed(conn: Connection | Pool, run: JobRecord, error: dict[str, Any]) -> bool:
    """Dead-letter the job: it keeps its last error and the per-attempt history (the last ERROR_HISTORY_MAX)."""
    status = await conn.execute(
        """
        UPDATE jobs SET status = 'failed', error = $3,
                        error_history = jsonb_path_query_array(error_history || jsonb_build_array($4::jsonb), $5),
                        finished_at = now(), updated_at = now()
        WHERE id = $1 AND run_seq = $2 AND status = 'running'
        """,
        run.id,
        run.run_seq,
        error,
        error_entry(run.attempts, error),
        _LAST_ERRORS,
    )
    return status.endswith(" 1")


async def mark_requeued(conn: Connection | Pool, run: JobRecord) -> bool:
    """The worker stopped mid-attempt (shutdown): the job waits in the queue again, and the interrupted
    attempt is given back (it was cut short by us, not by the job)."""
    status = await conn.execute(
        """
        UPDATE jobs SET status = 'queued', attempts = attempts - 1, updated_at = now()
        WHERE id = $1 AND run_seq = $2 AND status = 'running'
        """,
        run.id,
        run.run_seq,
    )
    return status.endswith(" 1")


async def mark_deferred(conn: Connection | Pool, run: JobRecord) -> bool:
    """The handler could not run the job yet (JobDeferred): it waits in the queue, the attempt is given back
    and, if no attempt ever ran, the job counts as never started again, so `expires_in_s` still applies."""
    status = await conn.execute(
        """
        UPDATE jobs SET status = 'queued', attempts = attempts - 1,
                        started_at = CASE WHEN attempts = 1 THEN NULL ELSE started_at END, updated_at = now()
        WHERE id = $1 AND run_seq = $2 AND status = 'running'
        """,
        run.id,
        run.run_seq,
    )
    return status.endswith(" 1")


async def reconcile_candidates(
    conn: Connection | Pool, *, grace_s: float, horizon_s: float, after: tuple[dt.datetime, str] | None, limit: int
) -> list[JobRecord]:
    """One page (keyset on updated_at, id) of the jobs Redis must hold for them to run:

    queued ones; scheduled or retrying ones due within `horizon_s`; running ones silent for longer than
    their own timeout. Each must have been untouched for `grace_s`, so an enqueue in flight is left alone.
    """
    rows = await conn.fetch(
        """
        SELECT * FROM jobs
        WHERE updated_at < now() - make_interval(secs => $1)
          AND (status = 'queued'
               OR (status IN ('scheduled', 'retrying') AND scheduled_for < now() + make_interval(secs => $2))
               OR (status = 'running' AND updated_at < now() - make_interval(secs => timeout_s + $1)))
          AND ($3::timestamptz IS NULL OR (updated_at, id) > ($3, $4))
        ORDER BY updated_at, id LIMIT $5
        """,
        grace_s,
        horizon_s,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [JobRecord.from_row(r) for r in rows]


async def touch(conn: Connection | Pool, job_ids: Sequence[str]) -> None:
    await conn.execute("UPDATE jobs SET updated_at = now() WHERE id = ANY($1::text[])", list(job_ids))


CANCELLED_ERROR: dict[str, Any] = {"type": "JobCancelled", "message": "cancelled on request", "retryable": False}


async def cancel(conn: Connection | Pool, job_id: str) -> tuple[JobRecord, str] | None:
    """Cancel an unfinished job; returns the record and the status it had, or None if already finished."""
    row = await conn.fetchrow(
        """
        UPDATE jobs SET status = 'cancelled', error = $2, finished_at = now(), updated_at = now()
        FROM (SELECT id, status AS before FROM jobs WHERE id = $1 FOR UPDATE) AS prior
        WHERE jobs.id = prior.id AND jobs.status IN ('queued', 'scheduled', 'running', 'retrying')
        RETURNING jobs.*, prior.before
        """,
        job_id,
        CANCELLED_ERROR,
    )
    if row is None:
        return None
    values = dict(row.items())
    before = values.pop("before")
    return JobRecord(**values), before


async def reset_for_retry(conn: Connection | Pool, job_ids: Sequence[str]) -> list[JobRecord]:
    """Put failed or cancelled jobs back to `queued` with their attempts from 0 (history kept)."""
    rows = await conn.fetch(
        """
        UPDATE jobs SET status = 'queued', attempts = 0, generation = generation + 1, result = NULL, error = NULL,
                        started_at = NULL,
                        finished_at = NULL, expires_at = NULL, scheduled_for = now(), updated_at = now()
        WHERE id = ANY($1::text[]) AND status IN ('failed', 'cancelled')
        RETURNING *
        """,
        list(job_ids),
    )
    return [JobRecord.from_row(r) for r in rows]
