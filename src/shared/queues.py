"""Queue-level state in the ledger: pause flags, per-status counts, and the bulk operations on a queue."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared import ledger
from shared.db import Connection, Pool

STATUSES = ("queued", "scheduled", "running", "retrying", "succeeded", "failed", "cancelled")


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
    """Record a pause or resume durably; returns the flag with its new version (see `shared.claim`)."""
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
            if row["status"] in ("queued", "scheduled", "retrying"):
                waiting += int(row["due"])
        oldest = entry.oldest_queued_age_s if row["oldest"] is None else max(float(row["oldest"]), 0.0)
        found[row["name"]] = QueueCounts(entry.name, entry.by_status, bool(row["paused"]), oldest, waiting)
    return [found[n] for n in names]


async def clean(
    conn: Connection | Pool, name: str, *, statuses: Sequence[str], older_than_s: float
) -> list[ledger.JobRecord]:
    """Delete finished jobs of the queue that finished more than `older_than_s` ago; returns them."""
    rows = await conn.fetch(
        """
        DELETE FROM jobs
        WHERE queue = $1 AND status = ANY($2::text[]) AND status IN ('succeeded', 'failed', 'cancelled')
          AND finished_at < now() - make_interval(secs => $3)
        RETURNING *
        """,
        name,
        list(statuses),
        older_than_s,
    )
    return [ledger.JobRecord.from_row(r) for r in rows]


async def failed_ids(conn: Connection | Pool, name: str) -> list[str]:
    return [r["id"] for r in await conn.fetch("SELECT id FROM jobs WHERE queue = $1 AND status = 'failed'", name)]
