"""Event streams: the per-principal cap on open streams (across every gateway, in Redis db 0) and SSE framing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Final, cast

from aiohttp import web

from gateway.keys import CACHE, EVENT_HUB, METRICS, PRINCIPAL, REQUEST_ID, SETTINGS
from shared import json
from shared.errors import RateLimited
from shared.queue import REDIS_ERRORS
from shared.redis import CacheRedis

logger = logging.getLogger(__name__)

PREFIX: Final = "conveyor:sse:"
# A stream's slot is leased and renewed while it is open, so a gateway that dies holding slots frees them.
LEASE_S: Final = 60.0
RENEW_S: Final = LEASE_S / 3
# Slots free when a stream ends, which cannot be predicted; a client should not hammer meanwhile.
RETRY_AFTER_S: Final = 5
# A client gone away shows up as one of these when the stream next writes.
DISCONNECTED = (ConnectionError,)

# Free the slots whose lease lapsed, then take one if any is free (the same shape as shared.limits).
_TAKE: Final = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
  redis.call('PEXPIREAT', KEYS[1], ARGV[4])
  return 1
end
return 0
"""


async def _take(cache: CacheRedis, key: str, token: str, cap: int) -> bool:
    now_ms = int(time.time() * 1000)
    args = (str(now_ms), str(cap), token, str(now_ms + int(LEASE_S * 1000)))
    # redis-py types eval for both its sync and async clients; the async one always returns an awaitable.
    return bool(await cast(Awaitable[Any], cache.eval(_TAKE, 1, key, *args)))


async def _renew(cache: CacheRedis, key: str, token: str) -> None:
    while True:
        await asyncio.sleep(RENEW_S)
        deadline_ms = int((time.time() + LEASE_S) * 1000)
        try:
            async with cache.pipeline(transaction=False) as pipe:
                pipe.zadd(key, {token: deadline_ms})
                pipe.pexpireat(key, deadline_ms)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            logger.warning("sse.renew_failed", extra={"reason": type(exc).__name__})


@contextlib.asynccontextmanager
async def stream_slot(request: web.Request) -> AsyncIterator[None]:
    """Hold one of the caller's SSE_MAX_PER_PRINCIPAL stream slots for as long as the stream is open.

    Counted across every gateway in Redis db 0; while the cache is unreachable, per gateway process instead.

    Raises:
        RateLimited: the principal already holds every slot (429 with Retry-After).
    """
    app = request.app
    sub, cap = request[PRINCIPAL].sub, app[SETTINGS].security.sse_per_principal
    cache, metrics, local = app[CACHE], app[METRICS], app[EVENT_HUB].streams_by_principal
    key, token = PREFIX + sub, secrets.token_hex(8)
    try:
        shared = True
        allowed = await _take(cache, key, token, cap)
    except REDIS_ERRORS as exc:
        logger.warning("sse.cap_unshared", extra={"reason": type(exc).__name__})
        shared, allowed = False, local[sub] < cap
    if not allowed:
        metrics.rate_limited.labels("sse").inc()
        raise RateLimited(
            f"at most {cap} event streams may be open at once per principal; close one first",
            retry_after_s=RETRY_AFTER_S,
        )
    local[sub] += 1
    metrics.sse_streams.inc()
    renewer = asyncio.create_task(_renew(cache, key, token)) if shared else None
    try:
        yield
    finally:
        metrics.sse_streams.dec()
        local[sub] -= 1
        if local[sub] <= 0:
            del local[sub]
        if renewer is not None:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            with contextlib.suppress(*REDIS_ERRORS):
                await cache.zrem(key, token)


async def open_stream(request: web.Request) -> web.StreamResponse:
    """Send the headers of a text/event-stream response (no proxy buffering, no caching)."""
    stream = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "X-Request-ID": request[REQUEST_ID],
        }
    )
    await stream.prepare(request)
    return stream


async def send(stream: web.StreamResponse, event: str, data: dict[str, Any], *, event_id: str | None = None) -> None:
    head = b"id: " + event_id.encode() + b"\n" if event_id is not None else b""
    await stream.write(head + b"event: " + event.encode() + b"\ndata: " + json.dumps(data) + b"\n\n")


async def keepalive(stream: web.StreamResponse) -> None:
    await stream.write(b": keepalive\n\n")
