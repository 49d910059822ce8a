"""Queue-level state in the ledger: pause flags, per-status counts, and the bulk operations on a queue."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from shared.core.status import STATUSES, WAITING
from shared.infra.db import Connection, Pool
from shared.ledger import records

# The bulk operations on a queue go a page of jobs at a time: what they hold is bounded by the page, not
# by how many jobs the queue has.
CLEAN_PAGE = 1000
RETRY_PAGE = 500

# The outer conditions repeat the inner ones: a job retried between the two is not deleted.
_CLEAN = """
DELETE FROM jobs
WHERE id IN (
    SELECT id FROM jobs
    WHERE queue = $1 AND status = ANY($2::text[]) AND status IN ('succeeded', 'failed', 'cancelled')
      AND finished_at < $3
    LIMIT $4
) AND status = ANY($2::text[]) AND status IN ('succeeded', 'failed', 'cancelled') AND finished_at < $3
RETURNING id, generation
"""
# Keyset pages on (finished_at, id); a failed job without a finish time (none is written so) comes last.
_FAILED_PAGE = """
SELECT id, coalesce(finished_at, 'infinity') AS at FROM jobs
WHERE queue = $1 AND status = 'failed' AND (finished_at IS NULL OR finished_at <= $2)
  AND ($3::timestamptz IS NULL OR (coalesce(finished_at, 'infinity'), id) > ($3, $4::text))
ORDER BY coalesce(finished_at, 'infinity'), id
LIMIT $5
"""


@dataclass(frozen=True, slots=True)
class QueueCounts:
    name: str
    by_status: dict[str, int]
    paused: bool
    oldest_queued_age_s: float | None
    waiting: int = 0  # due and not started: queued, plus scheduled or retrying whose time has come


@dataclass(frozen=True, slots=True)
class PauseFlag:
    """A queue's pause flag as the ledger holds it; `version` grows with every pause or resume."""

    paused: bool
    version: int


async def set_paused(conn: Connection | Pool, name: str, paused: bool) -> PauseFlag:
    """Record a pause or resume durably; returns the flag with its new version (see `shared.infra.claim`)."""
    row = await conn.fetchrow(
        """
        INSERT INTO queues (name, paused, version) VALUES ($1, $2, 1)
        ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, version = queues.version + 1, updated_at = now()
        RETURNING paused, version
        """,
        name,
        paused,
    )
    assert row is not None  # noqa: S101 - an upsert with RETURNING always returns its row
    return PauseFlag(bool(row["paused"]), int(row["version"]))


async def raise_version(conn: Connection | Pool, name: str, *, above: int) -> PauseFlag:
    """Give the queue's flag a version above `above`, keeping its value (the ledger's flag must win over a
    gate left by another ledger: a restored or recreated database)."""
    row = await conn.fetchrow(
        """
        INSERT INTO queues (name, paused, version) VALUES ($1, false, $2 + 1)
        ON CONFLICT (name) DO UPDATE SET version = greatest(queues.version, $2) + 1, updated_at = now()
        RETURNING paused, version
        """,
        name,
        above,
    )
    assert row is not None  # noqa: S101 - an upsert with RETURNING always returns its row
    return PauseFlag(bool(row["paused"]), int(row["version"]))


async def pause_flag(conn: Connection | Pool, name: str) -> PauseFlag:
    """The queue's flag; a queue never paused is running at version 0."""
    row = await conn.fetchrow("SELECT paused, version FROM queues WHERE name = $1", name)
    return PauseFlag(False, 0) if row is None else PauseFlag(bool(row["paused"]), int(row["version"]))


async def counts(conn: Connection | Pool, names: Sequence[str]) -> list[QueueCounts]:
    """Jobs per status, the pause flag, and how long the oldest due job has waited, for each queue."""
    rows = await conn.fetch(
        """
        SELECT q.name, j.status, count(j.id) AS n, coalesce(p.paused, false) AS paused,
               count(j.id) FILTER (WHERE j.scheduled_for <= now()) AS due,
               extract(epoch FROM now() - min(j.scheduled_for) FILTER (
                   WHERE j.status IN ('queued', 'scheduled', 'retrying') AND j.scheduled_for <= now())) AS oldest
        FROM unnest($1::text[]) AS q(name)
        LEFT JOIN jobs j ON j.queue = q.name
        LEFT JOIN queues p ON p.name = q.name
        GROUP BY q.name, j.status, p.paused
        """,
        list(names),
    )
    found: dict[str, QueueCounts] = {n: QueueCounts(n, dict.fromkeys(STATUSES, 0), False, None) for n in names}
    for row in rows:
        entry = found[row["name"]]
        waiting = entry.waiting
        if row["status"] is not None:
            entry.by_status[row["status"]] = int(row["n"])
            if row["status"] in WAITING:
                waiting += int(row["due"])
        oldest = entry.oldest_queued_age_s if row["oldest"] is None else max(float(row["oldest"]), 0.0)
        found[row["name"]] = QueueCounts(entry.name, entry.by_status, bool(row["paused"]), oldest, waiting)
    return [found[n] for n in names]


async def clean(
    conn: Connection | Pool, name: str, *, statuses: Sequence[str], older_than_s: float
) -> AsyncIterator[list[str]]:
    """Delete the queue's finished jobs that finished more than `older_than_s` ago, CLEAN_PAGE at a time; yields
    the arq ids of each page deleted (what arq may still hold of them), so that a clean of a million jobs
    never holds more than a page of them, and never a payload or a result.

    The cutoff is taken once, when the clean starts: a job finishing meanwhile is not cleaned.
    """
    cutoff = await conn.fetchval("SELECT now() - make_interval(secs => $1)", older_than_s)
    while rows := await conn.fetch(_CLEAN, name, list(statuses), cutoff, CLEAN_PAGE):
        yield [records.arq_id(r["id"], r["generation"]) for r in rows]


async def failed_pages(conn: Connection | Pool, name: str) -> AsyncIterator[list[str]]:
    """The ids of the queue's failed jobs, RETRY_PAGE at a time, oldest failure first (the order in which a
    retry of them all gives each owner's room).

    Only the jobs failed when the walk starts: a job retried from an earlier page that fails again
    meanwhile is not met a second time.
    """
    until = await conn.fetchval("SELECT now()")
    after: tuple[dt.datetime | None, str] = (None, "")  # None: from the first
    while rows := await conn.fetch(_FAILED_PAGE, name, until, *after, RETRY_PAGE):
        yield [r["id"] for r in rows]
        after = (rows[-1]["at"], rows[-1]["id"])
