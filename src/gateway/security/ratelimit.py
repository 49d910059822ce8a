"""Rate limits kept in Redis db 0 and shared by every gateway replica: per principal, auth failures per IP, queue cap.

While Redis db 0 is unreachable (or answers with an error), each limiter counts in this process instead
(gateway.security.local_limits: the same limits, per process) and tries Redis again at most every PROBE_EVERY_S. A
slow call is not an unreachable Redis: only the Redis client's own connect and socket timeouts end a call.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar, cast

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from redis.exceptions import NoScriptError

from gateway.keys import CACHE, METRICS, PG_POOL, PRINCIPAL, SETTINGS
from gateway.security.client_address import client_ip
from gateway.security.local_limits import Failures, LocalBuckets, LocalFailures, Verdict
from shared.core.errors import RateLimited, Unauthenticated
from shared.core.metrics import Metrics
from shared.infra.group_commit import GroupCommit
from shared.infra.redis import REDIS_ERRORS, CacheRedis
from shared.ledger import owner_caps

logger = logging.getLogger(__name__)
T = TypeVar("T")

PREFIX: Final = "conveyor:ratelimit:"
WINDOW_MS: Final = 60_000
PROBE_EVERY_S: Final = 2.0  # on the fallback, one request in this long asks Redis whether it answers again
# Redis unreachable (refused, reset, DNS, the client's socket timeout: OSError and redis' ConnectionError and
# TimeoutError) or refusing the call (out of memory, read-only, loading): the limiter falls back.

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


class _Backend:
    """Where one limiter counts: Redis, or this process while Redis fails. Each switch is logged and shown in
    `rate_limit_fallback{limiter}` once; on the fallback one request per PROBE_EVERY_S tries Redis again."""

    def __init__(self, limiter: str) -> None:
        self.limiter = limiter
        self._down_since: float | None = None
        self._next_probe = 0.0
        self._local_checks = 0

    async def decide(self, metrics: Metrics, in_redis: Callable[[], Awaitable[T]], locally: Callable[[], T]) -> T:
        """`in_redis()` while Redis answers (and as the probe), else `locally()`."""
        if self._ask_redis():
            try:
                value = await in_redis()
            except REDIS_ERRORS as exc:
                self._failed(exc, metrics)
            else:
                self._answered(metrics)
                return value
        self._local_checks += 1
        metrics.rate_limit_fallback_checks.labels(self.limiter).inc()
        return locally()

    def _ask_redis(self) -> bool:
        if self._down_since is None:
            return True
        now = time.monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + PROBE_EVERY_S  # set before the call: requests meanwhile stay local
        return True

    def _failed(self, exc: BaseException, metrics: Metrics) -> None:
        now = time.monotonic()
        self._next_probe = now + PROBE_EVERY_S
        if self._down_since is not None:
            return
        self._down_since, self._local_checks = now, 0
        metrics.rate_limit_fallback.labels(self.limiter).set(1)
        logger.warning("ratelimit.fallback_local", extra={"limiter": self.limiter, "reason": type(exc).__name__})

    def _answered(self, metrics: Metrics) -> None:
        if self._down_since is None:
            return
        down_s = round(time.monotonic() - self._down_since, 1)
        self._down_since = None
        metrics.rate_limit_fallback.labels(self.limiter).set(0)
        logger.info(
            "ratelimit.redis_back",
            extra={"limiter": self.limiter, "fallback_s": down_s, "checked_locally": self._local_checks},
        )


_SHA1: Final = {script: hashlib.sha1(script.encode()).hexdigest() for script in (_GCRA, _COUNT_FAILURE)}  # noqa: S324 - Redis names scripts by SHA-1


async def _eval(request: web.Request, script: str, key: str, *args: str) -> list[int]:
    return await _evalsha(request.app[CACHE], script, key, *args)


async def _evalsha(cache: CacheRedis, script: str, key: str, *args: str) -> list[int]:
    """Run a limiter script by its digest (EVALSHA: the script's text is sent only when Redis lacks it, after a
    restart or a SCRIPT FLUSH); no deadline of its own (a late event loop is not a Redis outage)."""
    try:
        reply = await cast(Awaitable[Any], cache.evalsha(_SHA1[script], 1, key, *args))
    except NoScriptError:
        reply = await cast(Awaitable[Any], cache.eval(script, 1, key, *args))  # EVAL loads it for the next call
    return [int(v) for v in reply]


Call = tuple[str, str, tuple[str, ...]]  # a limiter script, its key, its arguments


class _Pipelined:
    """Concurrent requests' limiter calls share one pipelined round trip to the cache (a GroupCommit: a lone
    request's call goes at once, alone). A pipeline that fails fails each of its calls with that error, so
    each request falls back as it would alone."""

    def __init__(self) -> None:
        self._group: GroupCommit[Call, list[int]] | None = None

    async def eval(self, request: web.Request, script: str, key: str, *args: str) -> list[int]:
        if self._group is None:
            cache = request.app[CACHE]

            async def flush(calls: Sequence[Call]) -> list[list[int] | BaseException]:
                return await _eval_many(cache, calls)

            self._group = GroupCommit(flush, max_items=200, max_in_flight=2)
        return await self._group.submit((script, key, args))


async def _eval_many(cache: CacheRedis, calls: Sequence[Call]) -> list[list[int] | BaseException]:
    if len(calls) == 1:
        script, key, args = calls[0]
        return [await _evalsha(cache, script, key, *args)]
    pipe = cache.pipeline(transaction=False)
    for script, key, args in calls:
        pipe.evalsha(_SHA1[script], 1, key, *args)
    replies = await pipe.execute(raise_on_error=False)
    results: list[list[int] | BaseException] = []
    for (script, key, args), reply in zip(calls, replies, strict=True):
        if isinstance(reply, NoScriptError):
            try:
                reply = await cast(Awaitable[Any], cache.eval(script, 1, key, *args))
            except REDIS_ERRORS as exc:
                reply = exc
        results.append(reply if isinstance(reply, BaseException) else [int(v) for v in reply])
    return results


def _seconds(ms: int) -> int:
    return max(1, math.ceil(ms / 1000))


def auth_failure_middleware() -> Middleware:
    """Counts failed authentications per client IP; past AUTH_FAILURES_PER_MINUTE a failing request gets 429
    instead of 401 until the window ends. Goes before (outside) the auth middleware.

    Only a request that failed authentication is ever refused here: valid credentials pass whatever the
    address has done. A request without an Authorization header is no guess: a plain 401, not counted. The
    count is shared in Redis; the last count seen is kept in this process, so a blocked address's failures
    cost no Redis call.
    """
    backend = _Backend("auth_failures")
    local = LocalFailures()

    def refuse(request: web.Request, retry_after_ms: int) -> RateLimited:
        request.app[METRICS].rate_limited.labels("auth_failures").inc()
        message = "too many failed authentications from this address; retry later"
        return RateLimited(message, retry_after_s=_seconds(retry_after_ms))

    async def count_failure(request: web.Request, ip: str) -> Failures:
        async def in_redis() -> Failures:
            count, ttl_ms = await _eval(request, _COUNT_FAILURE, f"{PREFIX}authfail:{ip}", str(WINDOW_MS))
            failures = Failures(count, ttl_ms)
            local.mirror(ip, failures)
            return failures

        return await backend.decide(request.app[METRICS], in_redis, lambda: local.add(ip, WINDOW_MS))

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Unauthenticated:
            if not request.headers.get("Authorization", "").strip():
                raise
            ip, limit = client_ip(request), request.app[SETTINGS].security.auth_failures_per_minute
            blocked_ms = local.blocked_ms(ip, limit)
            if blocked_ms > 0:
                raise refuse(request, blocked_ms) from None
            failures = await count_failure(request, ip)
            if failures.count <= limit:
                raise
            raise refuse(request, failures.ttl_ms) from None

    return middleware


def principal_rate_middleware() -> Middleware:
    """RATE_LIMIT_PER_MINUTE per principal, one Lua call per authenticated request; after the auth middleware.

    Public routes carry no principal and are not limited. Successful responses carry the `RateLimit-Limit`,
    `RateLimit-Remaining` and `RateLimit-Reset` headers.
    """
    backend = _Backend("principal")
    local = LocalBuckets()
    pipelined = _Pipelined()

    async def check(request: web.Request, sub: str, limit: int) -> Verdict:
        async def in_redis() -> Verdict:
            key = f"{PREFIX}principal:{sub}"
            reply = await pipelined.eval(request, _GCRA, key, str(limit), str(WINDOW_MS))
            allowed, remaining, retry_ms, reset_ms = reply
            local.mirror(sub, reset_ms)
            return Verdict(bool(allowed), remaining, retry_ms, reset_ms)

        return await backend.decide(request.app[METRICS], in_redis, lambda: local.take(sub, limit, WINDOW_MS))

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        principal = request.get(PRINCIPAL)
        if principal is None:
            return await handler(request)
        limit = request.app[SETTINGS].security.rate_limit_per_minute
        verdict = await check(request, principal.sub, limit)
        if not verdict.allowed:
            request.app[METRICS].rate_limited.labels("principal").inc()
            raise RateLimited(
                f"more than {limit} requests per minute; retry after the delay",
                retry_after_s=_seconds(verdict.retry_ms),
            )
        response = await handler(request)
        if not response.prepared:  # a stream has already sent its headers
            response.headers["RateLimit-Limit"] = str(limit)
            response.headers["RateLimit-Remaining"] = str(max(0, verdict.remaining))
            response.headers["RateLimit-Reset"] = str(_seconds(verdict.reset_ms))
        return response

    return middleware


async def guard_queue(
    request: web.Request, adding: int, *, idempotency_key: str | None = None, owner: str | None = None
) -> None:
    """Refuse (429) jobs that would take their owner (the caller unless given) past MAX_QUEUED_PER_OWNER
    waiting jobs.

    Raises:
        QueueFull: the owner already has that many jobs queued, scheduled or retrying.
    """
    app = request.app
    owner = request[PRINCIPAL].sub if owner is None else owner
    cap = app[SETTINGS].security.max_queued_per_owner
    if await owner_caps.has_room(app[PG_POOL], owner, adding=adding, cap=cap, idempotency_key=idempotency_key):
        return
    app[METRICS].rate_limited.labels("queue_cap").inc()
    raise owner_caps.QueueFull(cap)
