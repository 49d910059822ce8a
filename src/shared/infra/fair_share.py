"""A work-conserving fair share of a queue's worker slots between owners.

One owner may use every slot of a queue while nobody else waits. While another owner has due jobs and fewer
running than its share, no owner starts a job beyond its own share: `owner_share` (OWNER_SHARE) of the
queue's slots, at least one. Held jobs stay queued; they use no attempt and never fail for it. An owner is
held back only to leave a slot to someone who can take it: when every owner with due jobs already runs its
share, free slots go to whoever is first in priority order, so no slot idles while jobs wait.

Each worker process computes the shares from the ledger (who runs what, who waits) and the slots of the live
workers, every control interval, and publishes them to Redis as a hash per queue: owner (as it is spelled in
arq's job records) -> how many more jobs it may start. The claim script (`shared.infra.claim`) reads it, takes no
job of an owner at zero, and counts down as it takes. The hash lives a few control intervals: with no worker
copying the ledger (PostgreSQL down), it lapses and every owner may take any slot again. Fairness is soft:
an owner may pass its share by a job for the moment between a claim and the ledger recording it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Final

from arq.utils import timestamp_ms

from shared.core import json
from shared.infra.db import Pool

if TYPE_CHECKING:
    from arq.connections import ArqRedis

SHARE_PREFIX: Final = "conveyor:share:"
# How long a published share holds without a fresh copy from some worker (several control intervals).
SHARE_TTL_S: Final = 2.0
# At most this many owners with due jobs are read per queue and step; any further owner is unlimited until
# it runs jobs (the running owners are always read).
MAX_WAITING_OWNERS: Final = 1000
# Every job the claim script takes is noted, with when, for TRIED_WINDOW_MS (`conveyor:tried:<queue>`). A job
# taken at least TRIED_SETTLE_MS ago that the ledger still calls due never started: its type's limits held it
# (a per-owner concurrency limit, an open webhook circuit) and arq put it back for later. Its owner's due jobs
# of that type then do not count as waiting: nobody is held back for jobs that could not run anyway.
TRIED_PREFIX: Final = "conveyor:tried:"
TRIED_WINDOW_MS: Final = 2000
TRIED_SETTLE_MS: Final = 200

# Owners with due jobs on a queue: a loose scan of the waiting-jobs index, one probe per owner (its earliest
# job tells whether it has a due one), however many jobs each owner has queued.
_WAITING_OWNERS: Final = """
WITH RECURSIVE owners AS (
    (SELECT owner, scheduled_for FROM jobs
     WHERE queue = $1 AND status IN ('queued', 'scheduled', 'retrying')
     ORDER BY owner, scheduled_for LIMIT 1)
  UNION ALL
    SELECT next.owner, next.scheduled_for FROM owners CROSS JOIN LATERAL (
        SELECT j.owner, j.scheduled_for FROM jobs j
        WHERE j.queue = $1 AND j.status IN ('queued', 'scheduled', 'retrying') AND j.owner > owners.owner
        ORDER BY j.owner, j.scheduled_for LIMIT 1
    ) AS next
)
SELECT owner FROM owners WHERE scheduled_for <= now() LIMIT $2
"""

# Of the owners above, those whose every due job is of a type held for them (see TRIED_WINDOW_MS): $2 the
# owners, $3 the ledger ids of the jobs taken lately.
_HELD_OWNERS: Final = """
WITH held AS (
    SELECT DISTINCT owner, type FROM jobs
    WHERE id = ANY($3::text[]) AND queue = $1 AND owner = ANY($2::text[])
      AND status IN ('queued', 'scheduled', 'retrying') AND scheduled_for <= now()
)
SELECT DISTINCT h.owner FROM held h
WHERE NOT EXISTS (
    SELECT 1 FROM jobs j
    WHERE j.queue = $1 AND j.owner = h.owner AND j.status IN ('queued', 'scheduled', 'retrying')
      AND j.scheduled_for <= now() AND j.type NOT IN (SELECT type FROM held WHERE held.owner = h.owner)
)
"""

_RUNNING: Final = """
SELECT owner, count(*) AS running FROM jobs WHERE queue = $1 AND status = 'running' GROUP BY owner
"""


def share_key(queue: str) -> str:
    return SHARE_PREFIX + queue


def tried_key(queue: str) -> str:
    return TRIED_PREFIX + queue


def owner_field(owner: str) -> str:
    """The owner as arq's job record spells it (JSON string contents), which is what the claim script reads."""
    return json.dumps(owner)[1:-1].decode()


def slots_per_owner(capacity: int, share: float) -> int:
    return max(1, math.floor(share * capacity))


def allowances(running: Mapping[str, int], waiting: Collection[str], *, capacity: int, share: float) -> dict[str, int]:
    """How many more jobs each limited owner may start now; owners left out are not limited.

    An owner is limited only while some *other* owner waits with fewer running jobs than its share (a
    "hungry" owner): holding it back then leaves the slot to someone who can use it.
    """
    cap = slots_per_owner(capacity, share)
    hungry = {owner for owner in waiting if running.get(owner, 0) < cap}
    if not hungry:
        return {}
    limited: dict[str, int] = {}
    for owner in {*waiting, *running}:
        if hungry - {owner}:
            limited[owner] = max(0, cap - running.get(owner, 0))
    return limited


async def standing(pg: Pool, redis: ArqRedis, queue: str) -> tuple[dict[str, int], list[str]]:
    """Running jobs per owner on `queue` (from the ledger), and the owners with due jobs waiting there that
    could run: an owner whose due jobs were all taken lately and came back held by their type's limits does
    not wait for a slot (see TRIED_WINDOW_MS)."""
    now = timestamp_ms()
    key = tried_key(queue)
    async with redis.pipeline(transaction=False) as pipe:
        # The claim only adds to the set; its reader keeps it to the window (every control interval, not per job).
        pipe.zremrangebyscore(key, "-inf", now - TRIED_WINDOW_MS)
        pipe.pexpire(key, TRIED_WINDOW_MS * 2)
        pipe.zrangebyscore(key, now - TRIED_WINDOW_MS, now - TRIED_SETTLE_MS)
        tried = (await pipe.execute())[2]
    ledger_ids = [_ledger_id(arq_id) for arq_id in tried]
    async with pg.acquire() as conn:
        running = {r["owner"]: int(r["running"]) for r in await conn.fetch(_RUNNING, queue)}
        waiting = [r["owner"] for r in await conn.fetch(_WAITING_OWNERS, queue, MAX_WAITING_OWNERS)]
        held: set[str] = set()
        if ledger_ids and waiting:
            held = {r["owner"] for r in await conn.fetch(_HELD_OWNERS, queue, waiting, ledger_ids)}
    return running, [owner for owner in waiting if owner not in held]


def _ledger_id(arq_id: bytes | str) -> str:
    """The ledger id in an arq id (which carries a `.<generation>` suffix after a manual retry)."""
    text = arq_id.decode() if isinstance(arq_id, bytes) else arq_id
    return text.partition(".")[0]


async def publish(pg: Pool, redis: ArqRedis, queue: str, *, capacity: int, share: float) -> dict[str, int]:
    """Copy the shares of `queue` from the ledger to Redis (nothing there when no owner is limited)."""
    running, waiting = await standing(pg, redis, queue)
    limited = allowances(running, waiting, capacity=capacity, share=share)
    key = share_key(queue)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        if limited:
            pipe.hset(key, mapping={owner_field(owner): left for owner, left in limited.items()})
            pipe.pexpire(key, int(SHARE_TTL_S * 1000))
        await pipe.execute()
    return limited
