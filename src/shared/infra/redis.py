"""Create and close the cache (db 0) and jobs (db 1) Redis clients; readiness ping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.core.settings import RedisConfig

# What a Redis call raises when Redis is unreachable or failing (TimeoutError is an OSError).
REDIS_ERRORS = (RedisError, OSError)

CacheRedis = Redis


def cache_client(config: RedisConfig, *, subscriber: bool = False) -> CacheRedis:
    """The db 0 client: disposable data only (progress, events, rate-limit windows, cached status).

    A `subscriber` client has no read timeout: a subscription waits as long as it must for a message.
    """
    client = Redis.from_url(
        config.cache_url,
        socket_connect_timeout=config.connect_timeout_s,
        socket_timeout=None if subscriber else config.connect_timeout_s * 2,
        health_check_interval=15,
    )
    return cast(CacheRedis, client)


@asynccontextmanager
async def open_cache(config: RedisConfig) -> AsyncIterator[CacheRedis]:
    client = cache_client(config)
    try:
        yield client
    finally:
        await client.aclose(close_connection_pool=True)


async def ping(client: CacheRedis) -> str:
    """`"ok"` or a short, secret-free reason."""
    try:
        await client.ping()
    except REDIS_ERRORS as exc:
        return f"{type(exc).__name__}"
    return "ok"
