"""Circuit breaker per owner and target host, kept in Redis db 0 so every worker process sees one state.

One circuit per (owner, host), not per host: failures one tenant provokes at a shared host (a SaaS
endpoint answering 5xx to that tenant's path) must not hold back every other tenant's deliveries there.

closed ──N consecutive failures──▶ open ──after open_s──▶ half-open (one probe at a time)
half-open ──probe succeeds──▶ closed;   half-open ──probe fails──▶ open again (for open_s)

Each transition is one Lua call, so two workers never both take the probe. The state is disposable: losing
it only closes every circuit, which is what callers do anyway while the cache is down (they fail open).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, cast

from shared.infra.redis import CacheRedis

PREFIX: Final = "conveyor:circuit:"
# A circuit not heard of for this long is forgotten (its failure count starts again from zero).
KEY_TTL_MS: Final = 24 * 3600 * 1000


class CircuitState(IntEnum):
    """Counted, by state, in the `webhook_circuits` gauge (closed ones are not)."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


# KEYS[1] circuit; ARGV now_ms, probe_ms (how long a probe holds the half-open circuit), ttl_ms.
# Returns {allowed, state, wait_ms}. An open circuit whose time is up lets exactly one caller through (the
# probe); until that probe reports back (or its hold lapses, if its worker died), everyone else waits.
_ACQUIRE: Final = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'closed' then return {1, 0, 0} end
local now = tonumber(ARGV[1])
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if now < until_ms then
  if state == 'open' then return {0, 2, until_ms - now} end
  return {0, 1, until_ms - now}
end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'until', now + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, 1, 0}
"""

# KEYS[1] circuit; ARGV now_ms, failures to open, open_ms, ttl_ms. Returns the state after the failure.
_FAILURE: Final = """
local state = redis.call('HGET', KEYS[1], 'state')
local now = tonumber(ARGV[1])
if state == 'open' then return 2 end
if state == 'half_open' or redis.call('HINCRBY', KEYS[1], 'failures', 1) >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + tonumber(ARGV[3]), 'failures', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return 2
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 0
"""

# KEYS[1] circuit. A success closes a closed or half-open circuit; a late success of a request that started
# before the circuit opened does not cut the open time short. Returns the state after it.
_SUCCESS: Final = """
if redis.call('HGET', KEYS[1], 'state') == 'open' then return 2 end
redis.call('DEL', KEYS[1])
return 0
"""


@dataclass(frozen=True, slots=True)
class Permit:
    allowed: bool
    state: CircuitState
    wait_s: float  # when refused: until the circuit may let a probe through (or the probe's hold lapses)


@dataclass(frozen=True, slots=True)
class Breaker:
    """The policy; the state lives in Redis under one key per circuit (see `circuit`)."""

    failures: int
    open_s: float
    probe_s: float

    async def acquire(self, cache: CacheRedis, circuit: str) -> Permit:
        allowed, state, wait_ms = await _eval(
            cache, _ACQUIRE, PREFIX + circuit, _now_ms(), int(self.probe_s * 1000), KEY_TTL_MS
        )
        return Permit(allowed=bool(allowed), state=CircuitState(state), wait_s=wait_ms / 1000)

    async def failed(self, cache: CacheRedis, circuit: str) -> CircuitState:
        state = await _eval(
            cache, _FAILURE, PREFIX + circuit, _now_ms(), self.failures, int(self.open_s * 1000), KEY_TTL_MS
        )
        return CircuitState(state)

    async def succeeded(self, cache: CacheRedis, circuit: str) -> CircuitState:
        return CircuitState(await _eval(cache, _SUCCESS, PREFIX + circuit))


def circuit(owner: str, host: str) -> str:
    """The circuit of `owner`'s deliveries to `host` (case-insensitive); the owner is hashed, so the key
    stays short and does not spell out the subject (an unsalted hash: not a secret from Redis's readers)."""
    return f"{host.lower()}:{hashlib.sha256(owner.encode()).hexdigest()[:16]}"


def _now_ms() -> int:
    # Wall-clock milliseconds: the deadlines are compared by other processes, possibly on other machines.
    return int(time.time() * 1000)


async def _eval(cache: CacheRedis, script: str, key: str, *args: int) -> Any:
    # redis-py types eval for both its sync and async clients; the async one always returns an awaitable.
    return await cast(Awaitable[Any], cache.eval(script, 1, key, *(str(a) for a in args)))
