"""The pair of Redis databases (cache, cache + 1) a test session or a bench run claims through a key in db 0,
so concurrent runs never flush each other's queues; a developer's own databases 0 and 1 are never used.

Used by the integration tests' `services` fixture and by `make bench` (which puts tests/ on its path).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis

LOCK_PREFIX: Final = "conveyor:test-session:db"
# The cache databases a pair may start at (its jobs database is the next one): 14/15, 12/13, … 2/3.
CACHE_DBS: Final = tuple(range(14, 1, -2))
LOCK_TTL_S: Final = 3600


def database_url(redis_base: str, db: int) -> str:
    """`redis_base` (a server URL, with or without a database) pointed at database `db`."""
    return urlunsplit(urlsplit(redis_base)._replace(path=f"/{db}"))


async def claim_pair(redis_base: str, holder: str, *, lowest_first: bool = False) -> int | None:
    """Claim the first free pair and return its cache database; None when every pair is taken.

    Tests claim from the top (14/15) and benches from the bottom (2/3), so the two rarely even compete.
    Redis errors propagate: the caller says which service is unreachable.
    """
    locks = Redis.from_url(database_url(redis_base, 0), socket_connect_timeout=3)
    try:
        for cache_db in sorted(CACHE_DBS) if lowest_first else CACHE_DBS:
            if await locks.set(f"{LOCK_PREFIX}{cache_db}", holder, nx=True, ex=LOCK_TTL_S):
                return cache_db
        return None
    finally:
        await locks.aclose()


async def release_pair(redis_base: str, cache_db: int) -> None:
    """Give back the pair claimed by `claim_pair`."""
    locks = Redis.from_url(database_url(redis_base, 0), socket_connect_timeout=3)
    try:
        await locks.delete(f"{LOCK_PREFIX}{cache_db}")
    finally:
        await locks.aclose()
