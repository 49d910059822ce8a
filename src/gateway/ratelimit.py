"""Rate limits kept in Redis db 0 and shared by every gateway replica: per principal, auth failures per IP, queue cap.

Redis trouble never fails a request: the limiter steps aside (fails open) for a few seconds and says so in
the log, because refusing every client while the cache is down would turn a cache outage into an API outage.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import Awaitable
from typing import Any, Final, cast

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from redis.exceptions import RedisError

from gateway.keys import CACHE, METRICS, PG_POOL, PRINCIPAL, SETTINGS
from shared import quota
from shared.errors import RateLimited, Unauthenticated

logger = logging.getLogger(__name__)

PREFIX: Final = "conveyor:ratelimit:"
WINDOW_MS: Final = 60_000
CALL_TIMEOUT_S: Final = 0.25  # a limiter call normally takes well under a millisecond
BYPASS_S: Final = 2.0  # after a Redis error, requests pass without trying Redis for this long
WARN_EVERY_S: Final = 5.0
MAX_BLOCKED_IPS: Final = 10_000
QUEUE_CAP_RETRY_S: Final = 10
REDIS_ERRORS: Final = (RedisError, OSError, TimeoutError)

# Paths that take a bearer token (the same rule as the auth middleware): only these are refused to a blocked IP.
_API_PREFIX: Final = "/api/v1/"
_PUBLIC_API_PATHS: Final = frozenset({"/api/v1/openapi.json"})

# GCRA (a token bucket kept as one timestamp): the bucket holds ARGV[1] requests and refills over the window.
# The server's clock is used, so replicas with skewed clocks agree. Returns {allowed, remaining, retry_ms, reset_ms}.
_GCRA: Final = """
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local interval = period / limit
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - period
if now < allow_at then
  return {0, 0, math.ceil(allow_at - now), math.ceil(tat - now)}
end
-- At huge limits the interval is below a double's precision at `now`: the key still lives at least 1 ms.
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
return {1, math.floor((period - (new_tat - now)) / interval), 0, math.ceil(new_tat - now)}
"""

# A fixed window of failures per IP, opened by the first failure. Returns {failures, ms left in the window}.
_COUNT_FAILURE: Final = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}
"""


class _FailOpen:
    """Remembers a Redis failure so requests skip the limiter for a while; warns at most every few seconds."""

    def __init__(self) -> None:
        self._bypass_until = 0.0
        self._warned_at = -math.inf
        self._skipped = 0

    def bypassing(self) -> bool:
        if time.monotonic() < self._bypass_until:
            self._skipped += 1
            return True
        return False

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._bypass_until = now + BYPASS_S
        self._skipped += 1
        if now - self._warned_at >= WARN_EVERY_S:
            logger.warning(
                "ratelimit.unavailable",
                extra={"reason": type(exc).__name__, "requests_unlimited": self._skipped, "fail_open": True},
            )
            self._warned_at, self._skipped = now, 0


async def _eval(request: web.Request, script: str, key: str, *args: str) -> list[int]:
    cache = request.app[CACHE]
    async with asyncio.timeout(CALL_TIMEOUT_S):
        reply = await cast(Awaitable[Any], cache.eval(script, 1, key, *args))
    return [int(v) for v in reply]


def client_ip(request: web.Request) -> str:
    """The peer address, or the first X-Forwarded-For hop when the proxy in front is trusted to set it."""
    if request.app[SETTINGS].security.trust_forwarded_for:
        first = request.headers.get("X-Forwarded-For", "").split(",", 1)[0].strip()
        try:
            return str(ipaddress.ip_address(first))
        except ValueError:
            pass
    return request.remote or "unknown"


def _needs_token(request: web.Request) -> bool:
    return request.path.startswith(_API_PREFIX) and request.path not in _PUBLIC_API_PATHS


def _seconds(ms: int) -> int:
    return max(1, math.ceil(ms / 1000))


class _Blocklist:
    """IPs refused until a moment (monotonic), bounded so that a spray of addresses cannot grow it forever."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def seconds_left(self, ip: str) -> float:
        until = self._until.get(ip)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self._until[ip]
        return max(0.0, left)

    def block(self, ip: str, seconds: float) -> None:
        if len(self._until) >= MAX_BLOCKED_IPS:
            now = time.monotonic()
            stale = [k for k, v in self._until.items() if v <= now] or list(self._until)[: MAX_BLOCKED_IPS // 10]
            for key in stale:
                del self._until[key]
        self._until[ip] = time.monotonic() + seconds


def auth_failure_middleware() -> Middleware:
    """Counts 401s per client IP; past AUTH_FAILURES_PER_MINUTE the IP gets 429 before its token is even read.

    Goes before the auth middleware. The count is shared in Redis; the verdict is remembered in this process
    until the window ends, so a blocked IP costs no Redis call and a good request costs none either.
    """
    blocked = _Blocklist()
    fail_open = _FailOpen()

    def refuse(request: web.Request, retry_after_s: int) -> RateLimited:
        request.app[METRICS].rate_limited.labels("auth_failures").inc()
        message = "too many failed authentications from this address; retry later"
        return RateLimited(message, retry_after_s=retry_after_s)

    async def count_failure(request: web.Request, ip: str) -> tuple[int, int] | None:
        """(failures in the window, ms left in it), or None while Redis is unavailable."""
        unchecked = request.app[METRICS].rate_limit_unchecked.labels("auth_failures")
        if fail_open.bypassing():
            unchecked.inc()
            return None
        try:
            failures, ttl_ms = await _eval(request, _COUNT_FAILURE, f"{PREFIX}authfail:{ip}", str(WINDOW_MS))
        except REDIS_ERRORS as exc:
            fail_open.failed(exc)
            unchecked.inc()
            return None
        return failures, ttl_ms

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _needs_token(request):
            return await handler(request)
        ip = client_ip(request)
        left = blocked.seconds_left(ip)
        if left > 0:
            raise refuse(request, math.ceil(left))
        try:
            return await handler(request)
        except Unauthenticated:
            counted = await count_failure(request, ip)
            if counted is None or counted[0] <= request.app[SETTINGS].security.auth_failures_per_minute:
                raise
            blocked.block(ip, counted[1] / 1000)
            raise refuse(request, _seconds(counted[1])) from None

    return middleware


def principal_rate_middleware() -> Middleware:
    """RATE_LIMIT_PER_MINUTE per principal, one Lua call per authenticated request; after the auth middleware.

    Public routes carry no principal and are not limited. Successful responses carry the `RateLimit-Limit`,
    `RateLimit-Remaining` and `RateLimit-Reset` headers.
    """
    fail_open = _FailOpen()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        principal = request.get(PRINCIPAL)
        if principal is None:
            return await handler(request)
        unchecked = request.app[METRICS].rate_limit_unchecked.labels("principal")
        if fail_open.bypassing():
            unchecked.inc()
            return await handler(request)
        limit = request.app[SETTINGS].security.rate_limit_per_minute
        try:
            allowed, remaining, retry_ms, reset_ms = await _eval(
                request, _GCRA, f"{PREFIX}principal:{principal.sub}", str(limit), str(WINDOW_MS)
            )
        except REDIS_ERRORS as exc:
            fail_open.failed(exc)
            unchecked.inc()
            return await handler(request)
        if not allowed:
            request.app[METRICS].rate_limited.labels("principal").inc()
            raise RateLimited(
                f"more than {limit} requests per minute; retry after the delay", retry_after_s=_seconds(retry_ms)
            )
        response = await handler(request)
        if not response.prepared:  # a stream has already sent its headers
            response.headers["RateLimit-Limit"] = str(limit)
            response.headers["RateLimit-Remaining"] = str(max(0, remaining))
            response.headers["RateLimit-Reset"] = str(_seconds(reset_ms))
        return response

    return middleware


async def guard_queue(request: web.Request, adding: int, *, idempotency_key: str | None = None) -> None:
    """Refuse (429) jobs that would take the caller past MAX_QUEUED_PER_OWNER waiting jobs.

    Raises:
        RateLimited: the owner already has that many jobs queued, scheduled or retrying.
    """
    app, owner = request.app, request[PRINCIPAL].sub
    cap = app[SETTINGS].security.max_queued_per_owner
    if await quota.has_room(app[PG_POOL], owner, adding=adding, cap=cap, idempotency_key=idempotency_key):
        return
    app[METRICS].rate_limited.labels("queue_cap").inc()
    raise RateLimited(
        f"at most {cap} jobs may be waiting (queued, scheduled or retrying) per owner; retry once some have started",
        retry_after_s=QUEUE_CAP_RETRY_S,
    )
