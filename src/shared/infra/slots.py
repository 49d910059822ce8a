"""Per-type limits shared by every worker process, kept in Redis db 0: concurrency per owner, starts per second."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable
from typing import Any, Final, Protocol, cast

from shared.infra.redis import CacheRedis

PREFIX: Final = "conveyor:limit:"

# Free the slots whose holder's deadline passed (a worker that died holding one), then take one if any is free.
_TAKE_SLOT: Final = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return 1 end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
  redis.call('PEXPIREAT', KEYS[1], ARGV[4])
  return 1
end
return 0
"""

# A fixed window counter: at most ARGV[1] starts per window of ARGV[2] ms.
_TAKE_START: Final = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then return 0 end
return 1
"""


class Limits(Protocol):
    """A job type's limits (shared.jobtypes.spec.Limits): at most so many running per owner, started per second."""

    @property
    def concurrency_per_owner(self) -> int | None: ...
    @property
    def per_second(self) -> float | None: ...


async def _run(script: str, numkeys: int, *args: str, cache: CacheRedis) -> int:
    # redis-py types eval for both its sync and async clients; the async one always returns an awaitable.
    return int(await cast(Awaitable[Any], cache.eval(script, numkeys, *args)))


async def take_slot(cache: CacheRedis, key: str, token: str, *, cap: int, hold_s: float) -> bool:
    """Take one of `cap` leased slots in the sorted set `key` for `token`, held `hold_s` unless renewed
    (`renew_slot`); slots whose lease lapsed (a holder that died) are freed first. True if taken or held."""
    now_ms = int(time.time() * 1000)
    args = (str(now_ms), str(cap), token, str(now_ms + int(hold_s * 1000)))
    return bool(await _run(_TAKE_SLOT, 1, key, *args, cache=cache))


async def renew_slot(cache: CacheRedis, key: str, token: str, *, hold_s: float) -> None:
    """Extend `token`'s lease on its slot by `hold_s` from now."""
    deadline_ms = int((time.time() + hold_s) * 1000)
    async with cache.pipeline(transaction=False) as pipe:
        pipe.zadd(key, {token: deadline_ms})
        pipe.pexpireat(key, deadline_ms)
        await pipe.execute()


def _slot_key(job_type: str, owner: str) -> str:
    return f"{PREFIX}running:{job_type}:{owner}"


async def try_start(
    cache: CacheRedis, limits: Limits, *, job_type: str, owner: str, job_id: str, hold_s: float
) -> bool:
    """Take a concurrency slot (held at most `hold_s`) and a start within the rate; False means wait.

    A slot taken while the rate then refuses is given back, so a waiting job holds nothing.
    """
    if limits.concurrency_per_owner is not None:
        slot = _slot_key(job_type, owner)
        if not await take_slot(cache, slot, job_id, cap=limits.concurrency_per_owner, hold_s=hold_s):
            return False
    if limits.per_second is not None:
        now_ms = int(time.time() * 1000)
        window_ms = max(1000, math.ceil(1000 / limits.per_second))
        allowed = max(1, round(limits.per_second * window_ms / 1000))
        window = now_ms // window_ms
        key = f"{PREFIX}rate:{job_type}:{window}"
        if not await _run(_TAKE_START, 1, key, str(allowed), str(window_ms), cache=cache):
            await release(cache, limits, job_type=job_type, owner=owner, job_id=job_id)
            return False
    return True


async def release(cache: CacheRedis, limits: Limits, *, job_type: str, owner: str, job_id: str) -> None:
    if limits.concurrency_per_owner is not None:
        await cache.zrem(_slot_key(job_type, owner), job_id)
