"""A queue's pause flag end to end: recorded in the ledger, then published to the queue's start gate in Redis.

The ledger is the record and always wins. The gate refuses a version older than its own, which keeps a
stale copy from undoing a newer pause; a gate whose version is ahead of the ledger's came from another
ledger (a restored or recreated database, a deleted `queues` row), so the ledger's flag gets a version above
it and is published again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from shared.core.errors import Conflict
from shared.infra import claim
from shared.infra.db import Pool
from shared.ledger import queue_state
from shared.ledger.queue_state import PauseFlag

if TYPE_CHECKING:
    from arq.connections import ArqRedis

# Rounds of "the gate is newer: read the ledger again" before giving up; each round means another pause or
# resume landed meanwhile, so more than a few only happen under a storm of them.
_ROUNDS: Final = 5


async def set_paused(pg: Pool, redis: ArqRedis, queue: str, paused: bool) -> PauseFlag:
    """Pause or resume: durable in the ledger first, then in the gate. Once this returns, every claim sees it.

    Raises:
        Conflict: other pauses and resumes kept landing while this one was published (retry).
        redis.exceptions.RedisError, OSError: the gate could not be written (the ledger keeps the flag, and
            every worker publishes it again within its control interval).
    """
    return await publish(pg, redis, queue, await queue_state.set_paused(pg, queue, paused))


async def publish(pg: Pool, redis: ArqRedis, queue: str, flag: PauseFlag | None = None) -> PauseFlag:
    """Copy the ledger's flag (`flag`, or read now) to the gate; returns the flag the gate now holds."""
    flag = flag or await queue_state.pause_flag(pg, queue)
    for _ in range(_ROUNDS):
        ahead = await claim.set_gate(redis, queue, version=flag.version, paused=flag.paused)
        if ahead is None:
            return flag
        fresh = await queue_state.pause_flag(pg, queue)
        # A newer pause or resume in the ledger explains the gate: publish that. Otherwise the gate is foreign.
        flag = fresh if fresh.version >= ahead else await queue_state.raise_version(pg, queue, above=ahead)
    raise Conflict(f"the pause flag of queue {queue!r} kept changing while it was published; retry")
