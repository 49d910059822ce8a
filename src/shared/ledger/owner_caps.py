"""The caps on what one owner may hold, read from the ledger wherever a job or a schedule is created.

MAX_QUEUED_PER_OWNER bounds an owner's waiting jobs (queued, scheduled, retrying) on every path that
creates one: a submission or a batch (the gateway answers 429), a manual retry, a schedule's fire and a
batch's on_complete (both made by the workers, which record why a job was not made).
MAX_SCHEDULES_PER_OWNER bounds the schedules an owner may keep.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from shared.core.errors import Conflict, RateLimited
from shared.infra.db import Connection, Pool
from shared.ledger import records

QUEUE_CAP_RETRY_S = 10

# Counted on the partial index of migration 0009, stopping at cap + 1: the cost is bounded by the cap,
# not by the size of the ledger, and is tiny for the usual owner with few jobs waiting.
_WAITING = """
SELECT count(*) FROM (
    SELECT 1 FROM jobs WHERE owner = $1 AND status IN ('queued', 'scheduled', 'retrying') LIMIT $2
) AS waiting
"""
# A replay records nothing only within the idempotency window: past it the key is freed and a new job
# is recorded (shared.ledger.records.insert_job), which counts like any other.
_REPLAY = """
SELECT 1 FROM jobs WHERE owner = $1 AND idempotency_key = $2 AND created_at >= now() - make_interval(secs => $3)
"""


class QueueFull(RateLimited):
    """The owner already has MAX_QUEUED_PER_OWNER jobs waiting (a 429, like every flood guard)."""

    def __init__(self, cap: int) -> None:
        super().__init__(
            f"at most {cap} jobs may be waiting (queued, scheduled or retrying) per owner; retry once some have"
            " started",
            retry_after_s=QUEUE_CAP_RETRY_S,
        )
        self.cap = cap


class ScheduleLimitReached(Conflict):
    """The owner already keeps MAX_SCHEDULES_PER_OWNER schedules: a state to change (delete one), not a
    request to repeat later, so a 409 with its own code rather than a 429."""

    code = "schedule_limit_reached"

    def __init__(self, cap: int) -> None:
        super().__init__(
            f"at most {cap} schedules per owner (MAX_SCHEDULES_PER_OWNER); delete one you no longer need first",
            details={"limit": cap},
        )


async def waiting(conn: Connection | Pool, owner: str, *, cap: int) -> int:
    """How many jobs the owner has waiting, counted up to `cap + 1` at most."""
    return int(await conn.fetchval(_WAITING, owner, cap + 1))


async def has_room(
    conn: Connection | Pool, owner: str, *, adding: int, cap: int, idempotency_key: str | None = None
) -> bool:
    """Whether `adding` more waiting jobs keep the owner within `cap`.

    The check and the insert are not one transaction, so concurrent submissions may overshoot the cap by
    about the number of requests in flight: a flood guard, not an exact quota. An idempotent replay of a job
    recorded within the idempotency window always has room, since it records nothing.
    """
    if await waiting(conn, owner, cap=cap) + adding <= cap:
        return True
    if idempotency_key is not None:
        window_s = records.IDEMPOTENCY_WINDOW.total_seconds()
        return bool(await conn.fetchval(_REPLAY, owner, idempotency_key, window_s))
    return False


async def check_room(conn: Connection | Pool, owner: str, *, adding: int, cap: int) -> None:
    """Raises QueueFull unless `adding` more waiting jobs keep the owner within `cap`."""
    if not await has_room(conn, owner, adding=adding, cap=cap):
        raise QueueFull(cap)


async def within_room(conn: Connection | Pool, job_ids: Sequence[str], *, cap: int) -> tuple[list[str], int]:
    """The jobs of `job_ids` (failed or cancelled, about to be retried) that fit their owners' room, oldest
    first per owner, and how many do not."""
    rows = await conn.fetch(
        "SELECT id, owner FROM jobs WHERE id = ANY($1::text[]) ORDER BY finished_at NULLS LAST, id", list(job_ids)
    )
    by_owner: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_owner[row["owner"]].append(row["id"])
    fitting: list[str] = []
    for owner, ids in by_owner.items():
        room = max(0, cap - await waiting(conn, owner, cap=cap))
        fitting += ids[:room]
    return fitting, len(rows) - len(fitting)


async def lock_schedules(conn: Connection, owner: str, *, cap: int) -> None:
    """Inside a transaction: hold the owner's schedule-creation lock and check there is room for one more.

    The lock (per owner, released at commit) makes the count and the insert that follows exact, even with
    many gateways.

    Raises:
        ScheduleLimitReached: the owner already has `cap` schedules.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('conveyor:schedules:' || $1, 0))", owner)
    count = await conn.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM schedules WHERE owner = $1 LIMIT $2) AS held", owner, cap
    )
    if int(count) >= cap:
        raise ScheduleLimitReached(cap)
