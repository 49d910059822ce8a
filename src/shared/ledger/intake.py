"""Grouped submissions: the jobs of concurrent POST /api/v1/jobs go into the ledger as one multi-row INSERT.

One INSERT per group instead of one per request is what lets one gateway accept thousands of durable jobs a
second: the cost of a statement and its commit is shared. Each request still gets exactly today's answer:

- The queue cap (MAX_QUEUED_PER_OWNER) is counted once per owner of the group, in the same statement, and the
  items that would take their owner past it fail with QueueFull, in arrival order; a replay within the
  idempotency window records nothing, so it always passes (as `owner_caps.has_room` has it). As with single
  requests, the count and the insert are not one transaction across groups: the groups in flight together
  (two) may overshoot the cap by what they carry, a flood guard rather than an exact quota.
- An item whose key is already taken comes back from the INSERT without a row; it then goes through
  `records.insert_job`, the single-row path that answers replays, the window and 409.
- Two items of one group with the same owner and key behave as two requests one after the other: the
  first goes into the INSERT, the second through the single-row path once the first is committed.

Each caller's `record` returns only after the statement carrying its job has returned, in autocommit, so
committed: what it acknowledges is durable (shared.infra.group_commit). A failed statement fails its group.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from shared.infra.db import Pool
from shared.infra.group_commit import GroupCommit
from shared.ledger import owner_caps, records

Recorded = tuple[records.JobRecord, bool]

# One statement per group: count each owner's waiting jobs (on migration 0009's partial index, stopping at
# cap + 1, as owner_caps counts them), tell replays within the idempotency window (they record nothing, so they
# always have room), allow each owner's other items in arrival order while they fit, insert those allowed, and
# answer one row per item: its `ord`, whether it was `allowed`, and the row it created (NULLs when its key was
# taken). Each (owner, key) appears at most once in a group's input (repeats are handled after it).
_INTAKE = """
WITH input AS (
    SELECT * FROM unnest($1::integer[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::jsonb[], $9::integer[], $10::double precision[], $11::timestamptz[],
                         $12::timestamptz[], $13::text[], $14::text[], $15::text[], $16::text[])
        AS i(ord, id, type, queue, owner, status, priority, payload, max_attempts, timeout_s, scheduled_for,
             expires_at, idempotency_key, request_hash, request_id, batch_id)
), waiting AS (
    SELECT o.owner, (
        SELECT count(*) FROM (
            SELECT 1 FROM jobs WHERE owner = o.owner AND status IN ('queued', 'scheduled', 'retrying') LIMIT $17 + 1
        ) AS counted
    ) AS n
    FROM (SELECT DISTINCT owner FROM input) AS o
), marked AS (
    SELECT i.*, i.idempotency_key IS NOT NULL AND EXISTS (
        SELECT 1 FROM jobs j WHERE j.owner = i.owner AND j.idempotency_key = i.idempotency_key
                               AND j.created_at >= now() - make_interval(secs => $18)
    ) AS replay
    FROM input i
), ranked AS (
    SELECT m.*, m.replay OR w.n + count(*) FILTER (WHERE NOT m.replay)
                                       OVER (PARTITION BY m.owner ORDER BY m.ord) <= $17 AS allowed
    FROM marked m JOIN waiting w USING (owner)
), created AS (
    INSERT INTO jobs (id, type, queue, owner, status, priority, payload, max_attempts, timeout_s,
                      scheduled_for, expires_at, idempotency_key, request_hash, request_id, batch_id)
    SELECT id, type, queue, owner, status, priority, payload, max_attempts, timeout_s,
           scheduled_for, expires_at, idempotency_key, request_hash, request_id, batch_id
    FROM ranked WHERE allowed
    ORDER BY owner, idempotency_key  -- every group takes its keys in one order: two groups never deadlock
    ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING *
)
SELECT r.ord AS _ord, r.allowed AS _allowed, c.* FROM ranked r LEFT JOIN created c ON c.id = r.id
"""
_COLUMNS = (
    "id", "type", "queue", "owner", "status", "priority", "payload", "max_attempts", "timeout_s",
    "scheduled_for", "expires_at", "idempotency_key", "request_hash", "request_id", "batch_id",
)  # fmt: skip


def _first_of_each_key(jobs: Sequence[records.NewJob]) -> tuple[dict[tuple[str, str], int], list[int]]:
    """The first item of each (owner, idempotency key) in the group, and the items repeating one."""
    first: dict[tuple[str, str], int] = {}
    repeats: list[int] = []
    for i, job in enumerate(jobs):
        if job.idempotency_key is None:
            continue
        if (job.owner, job.idempotency_key) in first:
            repeats.append(i)
        else:
            first[job.owner, job.idempotency_key] = i
    return first, repeats


class Intake:
    """Records submitted jobs in groups, within the queue cap `cap` per owner."""

    def __init__(self, pool: Pool, *, cap: int, max_items: int = 500, max_in_flight: int = 2) -> None:
        self._pool = pool
        self.cap = cap
        self.groups: GroupCommit[records.NewJob, Recorded] = GroupCommit(
            self._flush, max_items=max_items, max_in_flight=max_in_flight
        )

    async def record(self, job: records.NewJob) -> Recorded:
        """Record the job with the next group (committed on return); with an idempotency key, the owner's
        earlier job instead when there is one.

        Returns:
            The record and whether this call created it.

        Raises:
            QueueFull: the job would take its owner past the cap.
            Conflict: the key was used within 24 h for a different request.
        """
        return await self.groups.submit(job)

    async def close(self) -> None:
        await self.groups.close()

    async def _flush(self, jobs: Sequence[records.NewJob]) -> list[Recorded | BaseException]:
        results: list[Recorded | BaseException | None] = [None] * len(jobs)
        first, repeats = _first_of_each_key(jobs)
        repeated = set(repeats)
        single: list[int] = []
        for row in await self._write([i for i in range(len(jobs)) if i not in repeated], jobs):
            i = row["_ord"]
            if not row["_allowed"]:
                results[i] = owner_caps.QueueFull(self.cap)
            elif row["id"] is None:
                single.append(i)  # its key is taken: a replay, a stale key or a 409
            else:
                results[i] = (records.JobRecord(**{k: v for k, v in row.items() if not k.startswith("_")}), True)
        for i in repeats:
            job = jobs[i]
            earlier = results[first[job.owner, job.idempotency_key]]  # type: ignore[index]
            if isinstance(earlier, owner_caps.QueueFull):
                results[i] = owner_caps.QueueFull(self.cap)  # as its earlier twin: no room, nothing to replay
            else:
                single.append(i)
        for i in sorted(single):
            try:
                results[i] = await records.insert_job(self._pool, jobs[i])
            except Exception as exc:  # noqa: BLE001 - this item's own error (409, ledger gone), the others stand
                results[i] = exc
        return [r if r is not None else RuntimeError("an item of the group got no result") for r in results]

    async def _write(self, items: Sequence[int], jobs: Sequence[records.NewJob]) -> list[asyncpg.Record]:
        """The group's one statement, for the items `items` of `jobs`: one row per item."""
        columns = [[getattr(jobs[i], column) for i in items] for column in _COLUMNS]
        window_s = records.IDEMPOTENCY_WINDOW.total_seconds()
        return await self._pool.fetch(_INTAKE, list(items), *columns, self.cap, window_s)
