"""The services a bench run measures against: Redis and PostgreSQL checked up front, a claimed pair of Redis
databases (as test sessions claim theirs), a throwaway ledger database, and the load other clients add."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import replace

import asyncpg
from harness import BenchError, Config, redacted, redis_snap, run
from redis.asyncio import Redis
from redis.exceptions import RedisError

from support import redis_pair as pairs
from support import throwaway_db


async def check_services(cfg: Config) -> dict[str, str]:
    """Ping Redis and PostgreSQL; BenchError with the URL and reason when either is unreachable."""
    client = Redis.from_url(cfg.jobs_url, socket_connect_timeout=3)
    try:
        redis_version = str((await client.info("server"))["redis_version"])
    except (OSError, RedisError) as exc:
        raise BenchError(f"Redis is unreachable at {redacted(cfg.redis_base)}: {exc}") from exc
    finally:
        await client.aclose()
    try:
        conn = await asyncpg.connect(cfg.admin_url, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise BenchError(f"PostgreSQL is unreachable at TEST_DATABASE_URL={redacted(cfg.admin_url)}: {exc}") from exc
    try:
        pg_version = str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()
    return {"redis": redis_version, "postgresql": pg_version}


async def claim_pair(cfg: Config) -> int | None:
    try:
        return await pairs.claim_pair(cfg.redis_base, f"bench:{os.getpid()}", lowest_first=True)
    except (OSError, RedisError) as exc:
        raise BenchError(f"Redis is unreachable at {redacted(cfg.redis_base)}: {exc}") from exc


async def release_pair(cfg: Config, cache_db: int) -> None:
    try:
        await pairs.release_pair(cfg.redis_base, cache_db)
    except (OSError, RedisError) as exc:
        raise BenchError(f"Redis is unreachable at {redacted(cfg.redis_base)}: {exc}") from exc


@contextlib.contextmanager
def redis_pair(cfg: Config) -> Iterator[Config]:
    """Claim a free pair of Redis databases as test sessions do, so a bench never flushes a running test's."""
    cache_db = run(claim_pair(cfg))
    if cache_db is None:
        raise BenchError(f"every Redis database pair is in use (keys {pairs.LOCK_PREFIX}* in db 0)")
    try:
        yield replace(cfg, cache_db=cache_db)
    finally:
        run(release_pair(cfg, cache_db))


@contextlib.contextmanager
def bench_database(cfg: Config) -> Iterator[Config]:
    url = run(throwaway_db.create_database(cfg.admin_url, "conveyor_bench"))
    try:
        yield replace(cfg, database_url=url)
    finally:
        run(throwaway_db.drop_database(cfg.admin_url, url))


async def background_redis_rate(cfg: Config, seconds: float = 0.5) -> float:
    """Commands/s other clients send this Redis while the bench is idle (they inflate Redis-wide counters)."""
    client = Redis.from_url(cfg.jobs_url)
    try:
        before = await redis_snap(client)
        await asyncio.sleep(seconds)
        after = await redis_snap(client)
    finally:
        await client.aclose()
    return (after.commands - before.commands - 1) / seconds
