"""Batches in the ledger: atomic creation, member counts, and completion decided exactly once."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.core.status import FINISHED
from shared.infra.db import Connection, Pool
from shared.ledger import records


def new_batch_id() -> str:
    return "bat_" + secrets.token_urlsafe(18)


@dataclass(frozen=True, slots=True)
class BatchView:
    id: str
    owner: str
    total: int
    counts: dict[str, int]
    on_complete_job_id: str | None

    @property
    def pending(self) -> int:
        return sum(n for status, n in self.counts.items() if status not in FINISHED)

    @property
    def status(self) -> str:
        if self.pending:
            return "running"
        if self.counts.get("failed"):
            return "failed"
        return "cancelled" if self.counts.get("cancelled") else "succeeded"

    def resource(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "total": self.total,
            **{status: self.counts.get(status, 0) for status in FINISHED},
            "pending": self.pending,
            "status": self.status,
            "on_complete_job_id": self.on_complete_job_id,
        }


async def create(
    conn: Connection,
    batch_id: str,
    owner: str,
    members: Sequence[records.NewJob],
    on_complete: dict[str, Any] | None,
    request_id: str | None,
) -> list[records.JobRecord]:
    """Record the batch and all its members, or nothing: call inside a transaction."""
    await conn.execute(
        "INSERT INTO batches (id, owner, total, on_complete, request_id) VALUES ($1, $2, $3, $4, $5)",
        batch_id, owner, len(members), on_complete, request_id,
    )  # fmt: skip
    return [(await records.insert_job(conn, member))[0] for member in members]


async def get(conn: Connection | Pool, batch_id: str) -> BatchView | None:
    # Not `on_complete`: a job request of up to MAX_BODY_BYTES that the view does not show.
    row = await conn.fetchrow("SELECT id, owner, total, on_complete_job_id FROM batches WHERE id = $1", batch_id)
    if row is None:
        return None
    counts = {
        r["status"]: int(r["n"])
        for r in await conn.fetch(
            "SELECT status, count(*) AS n FROM jobs WHERE batch_id = $1 GROUP BY status", batch_id
        )
    }
    return BatchView(row["id"], row["owner"], row["total"], counts, row["on_complete_job_id"])


@dataclass(frozen=True, slots=True)
class Completion:
    """A batch found complete by this caller, and the only one: it creates the on_complete job."""

    batch_id: str
    owner: str
    on_complete: dict[str, Any] | None
    request_id: str | None


async def claim_completion(conn: Connection, batch_id: str) -> Completion | None:
    """Inside a transaction: lock the batch and, if every member is finished and nobody completed it yet,
    mark it completed and return what to enqueue. Concurrent last finishers queue on the row lock; only
    the first sees it open."""
    row = await conn.fetchrow(
        "SELECT id, owner, on_complete, request_id, completed_at FROM batches WHERE id = $1 FOR UPDATE", batch_id
    )
    if row is None or row["completed_at"] is not None:
        return None
    pending = await conn.fetchval(
        "SELECT count(*) FROM jobs WHERE batch_id = $1 AND status <> ALL($2::text[])", batch_id, list(FINISHED)
    )
    if pending:
        return None
    await conn.execute("UPDATE batches SET completed_at = now() WHERE id = $1", batch_id)
    return Completion(row["id"], row["owner"], row["on_complete"], row["request_id"])


async def set_on_complete_job(conn: Connection, batch_id: str, job_id: str) -> None:
    await conn.execute("UPDATE batches SET on_complete_job_id = $2 WHERE id = $1", batch_id, job_id)


async def open_without_pending(conn: Connection | Pool, *, older_than_s: float, limit: int) -> list[str]:
    """Batches left open although every member finished (a finisher died before completing it)."""
    rows = await conn.fetch(
        """
        SELECT b.id FROM batches b
        WHERE b.completed_at IS NULL AND b.created_at < now() - make_interval(secs => $1)
          AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id AND j.status <> ALL($2::text[]))
        LIMIT $3
        """,
        older_than_s,
        list(FINISHED),
        limit,
    )
    return [r["id"] for r in rows]
