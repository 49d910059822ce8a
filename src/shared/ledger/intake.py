"""Grouped submissions: the jobs of concurrent POST /api/v1/jobs go into the ledger as one multi-row INSERT.

One INSERT per group instead of one per request is what lets one gateway accept thousands of durable jobs a
second: the cost of a statement and its commit is shared. Each request still gets exactly today's answer:

- The queue cap (MAX_QUEUED_PER_OWNER) is counted once per owner of the group, in one query, and the items
  that would take their owner past it fail with QueueFull, in arrival order; a replay within the idempotency
  window records nothing, so it always passes (as `owner_caps.has_room` has it).
- An item whose key is already taken comes back from the INSERT without a row; it then goes through
  `records.insert_job`, the single-row path that answers replays, the window and 409.
- Two items of one group with the same owner and key behave as two requests one after the other: the
  first goes into the INSERT, the second through the single-row path once the first is committed.

Each caller's `record` returns only after the statement carrying its job has returned, in autocommit, so
committed: what it acknowledges is durable (shared.infra.group_commit). A failed statement fails its group.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from shared.infra.db import Pool
from shared.infra.group_commit import GroupCommit
from shared.ledger import owner_caps, records

Recorded = tuple[records.JobRecord, bool]

_INSERT_MANY = """
INSERT INTO jobs (id, type, queue, owner, status, priority, payload, max_attempts, timeout_s,
                  scheduled_for, expires_at, idempotency_key, request_hash, request_id, batch_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[],
                     $8::integer[], $9::double precision[], $10::timestamptz[], $11::timestamptz[], $12::text[],
                     $13::text[], $14::text[], $15::text[])
ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING *
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
        candidates = [i for i in range(len(jobs)) if i not in repeated]
        refused = await self._over_cap(jobs, candidates)
        for i in refused:
            results[i] = owner_caps.QueueFull(self.cap)
        inserting = [i for i in candidates if i not in refused]
        created = await self._insert([jobs[i] for i in inserting]) if inserting else {}
        single: list[int] = []
        for i in inserting:
            record = created.get(jobs[i].id)
            if record is None:
                single.append(i)  # its key is taken: a replay, a stale key or a 409
            else:
                results[i] = (record, True)
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

    async def _over_cap(self, jobs: Sequence[records.NewJob], candidates: Sequence[int]) -> set[int]:
        """The items that would take their owner past the cap, in arrival order; replays within the
        idempotency window (asked only for owners that overflow) record nothing and always pass."""
        wanted: dict[str, list[int]] = defaultdict(list)
        for i in candidates:
            wanted[jobs[i].owner].append(i)
        waiting = await owner_caps.waiting_many(self._pool, list(wanted), cap=self.cap)
        overflowing = {owner: items for owner, items in wanted.items() if waiting[owner] + len(items) > self.cap}
        if not overflowing:
            return set()
        keyed = [i for items in overflowing.values() for i in items if jobs[i].idempotency_key is not None]
        replayed = await owner_caps.replays(self._pool, [(jobs[i].owner, jobs[i].idempotency_key or "") for i in keyed])
        refused: set[int] = set()
        for owner, items in overflowing.items():
            room = self.cap - waiting[owner]
            for i in items:
                if (owner, jobs[i].idempotency_key) in replayed:
                    continue
                if room > 0:
                    room -= 1
                else:
                    refused.add(i)
        return refused

    async def _insert(self, jobs: Sequence[records.NewJob]) -> dict[str, records.JobRecord]:
        """One INSERT for the group; the rows it created, by job id (a taken key gives no row)."""
        columns = [[getattr(job, column) for job in jobs] for column in _COLUMNS]
        rows = await self._pool.fetch(_INSERT_MANY, *columns)
        return {row["id"]: records.JobRecord.from_row(row) for row in rows}
