"""Event streams: the per-principal cap on open streams (across every gateway, in Redis db 0) and SSE framing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any, Final

from aiohttp import web

from gateway.http.render import event_frame
from gateway.keys import CACHE, EVENT_HUB, METRICS, PRINCIPAL, REQUEST_ID, SETTINGS
from shared.core.errors import RateLimited
from shared.infra.redis import REDIS_ERRORS, CacheRedis
from shared.infra.slots import renew_slot, take_slot

logger = logging.getLogger(__name__)

PREFIX: Final = "conveyor:sse:"
# A stream's slot is leased and renewed while it is open, so a gateway that dies holding slots frees them.
LEASE_S: Final = 60.0
RENEW_S: Final = LEASE_S / 3
# Slots free when a stream ends, which cannot be predicted; a client should not hammer meanwhile.
RETRY_AFTER_S: Final = 5
# A client gone away shows up as one of these when the stream next writes.
DISCONNECTED = (ConnectionError,)


async def _renew(cache: CacheRedis, key: str, token: str) -> None:
    while True:
        await asyncio.sleep(RENEW_S)
        try:
            await renew_slot(cache, key, token, hold_s=LEASE_S)
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
        allowed = await take_slot(cache, key, token, cap=cap, hold_s=LEASE_S)
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
    await stream.write(event_frame(event, data, event_id=event_id))


async def keepalive(stream: web.StreamResponse) -> None:
    await stream.write(b": keepalive\n\n")
