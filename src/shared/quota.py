"""The cap on an owner's waiting jobs (queued, scheduled, retrying), read from the ledger at submission."""

from __future__ import annotations

from shared.db import Pool

# Counted on the partial index of migration 0009, stopping at cap + 1: the cost is bounded by the cap,
# not by the size of the ledger, and is tiny for the usual owner with few jobs waiting.
_WAITING = """
SELECT count(*) FROM (
    SELECT 1 FROM jobs WHERE owner = $1 AND status IN ('queued', 'scheduled', 'retrying') LIMIT $2
) AS waiting
"""
_REPLAY = "SELECT 1 FROM jobs WHERE owner = $1 AND idempotency_key = $2"


async def has_room(pool: Pool, owner: str, *, adding: int, cap: int, idempotency_key: str | None = None) -> bool:
    """Whether `adding` more waiting jobs keep the owner within `cap`.

    The check and the insert are not one transaction, so concurrent submissions may overshoot the cap by
    about the number of requests in flight: a flood guard, not an exact quota. An idempotent replay of a job
    already recorded always has room, since it records nothing.
    """
    waiting = int(await pool.fetchval(_WAITING, owner, cap + 1))
    if waiting + adding <= cap:
        return True
    if idempotency_key is not None:
        return bool(await pool.fetchval(_REPLAY, owner, idempotency_key))
    return False
