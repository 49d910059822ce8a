"""Taking jobs off a queue: one Lua call that checks the queue's start gate and claims due jobs atomically.

The ledger (`queues` table) is the durable record of a queue's pause flag; the gate is its copy in Redis db 1,
next to arq's keys, so that the check which allows a start happens inside the claim itself. The gate holds
`<version>:open` or `<version>:paused`; the version grows with every pause or resume in the ledger, and a
write carrying an older version than the gate's is refused, so a worker re-copying the ledger can never
undo a newer pause (`shared.pause` publishes the ledger's flag). A queue with no gate (Redis restarted
empty, or flushed) starts nothing until a worker has copied the ledger's state again: the gate fails closed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, cast

from arq.constants import in_progress_key_prefix

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from arq.connections import ArqRedis

GATE_PREFIX: Final = "conveyor:gate:"

# KEYS[1] the gate; ARGV[1] version, ARGV[2] 'open' | 'paused'. Returns -1 if written, else the gate's own
# (newer) version, which it keeps.
_SET_GATE: Final = """
local current = redis.call('GET', KEYS[1])
if current then
  local version = tonumber(string.match(current, '^(%d+):'))
  if version and version > tonumber(ARGV[1]) then return version end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2])
return -1
"""

# KEYS[1] the queue's sorted set, KEYS[2] the gate, KEYS[3..] the in-progress keys of the candidates;
# ARGV[1] now (ms), ARGV[2] lease (ms), ARGV[3] how many to take, ARGV[4..] the candidates' ids, in order.
# Returns {gate, id1, score1, id2, score2, ...}: gate is 1 open, 0 paused, -1 unknown (nothing is taken then).
# A candidate is taken when nobody holds it and it is still in the queue and due, exactly arq's own check.
_CLAIM: Final = """
local gate = redis.call('GET', KEYS[2])
if not gate then return {-1} end
if string.sub(gate, -5) ~= ':open' then return {0} end
local now, lease, wanted = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local taken = {1}
for i = 3, #KEYS do
  if (#taken - 1) / 2 >= wanted then break end
  local id = ARGV[i + 1]
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= now then
      redis.call('SET', KEYS[i], '1', 'PX', lease)
      taken[#taken + 1] = id
      taken[#taken + 1] = score
    end
  end
end
return taken
"""


class Gate(StrEnum):
    OPEN = "open"
    PAUSED = "paused"
    UNKNOWN = "unknown"  # no gate in Redis yet: the ledger's state has not been copied


_GATE_REPLY: Final = {1: Gate.OPEN, 0: Gate.PAUSED, -1: Gate.UNKNOWN}


@dataclass(frozen=True, slots=True)
class Claimed:
    """What one claim call found: the gate's state and the jobs it took (id, arq score), in candidate order."""

    gate: Gate
    jobs: tuple[tuple[str, int], ...] = ()


def gate_key(queue: str) -> str:
    return GATE_PREFIX + queue


async def set_gate(redis: ArqRedis, queue: str, *, version: int, paused: bool) -> int | None:
    """Copy a pause flag (at `version`) to the queue's gate. None once written; the gate's own version when it
    already holds a newer one (and keeps it): see `shared.pause` for how the ledger still wins then."""
    state = Gate.PAUSED if paused else Gate.OPEN
    reply = int(await cast("Awaitable[Any]", redis.eval(_SET_GATE, 1, gate_key(queue), str(version), state.value)))
    return None if reply < 0 else reply


async def claim(
    redis: ArqRedis, queue_key: str, queue: str, candidates: Sequence[str], *, limit: int, lease_ms: int, now_ms: int
) -> Claimed:
    """Take up to `limit` of `candidates` (due ids, best first) for this worker, if the queue's gate is open.

    Each job taken gets arq's in-progress key (the lease) in the same atomic step, so no two workers take
    one job, and no job starts once a pause has reached the gate.
    """
    keys = [queue_key, gate_key(queue), *(in_progress_key_prefix + job_id for job_id in candidates)]
    args = [str(now_ms), str(lease_ms), str(limit), *candidates]
    reply = await cast("Awaitable[list[Any]]", redis.eval(_CLAIM, len(keys), *keys, *args))
    gate = _GATE_REPLY[int(reply[0])]
    pairs = reply[1:]
    jobs = tuple((_text(pairs[i]), int(float(pairs[i + 1]))) for i in range(0, len(pairs), 2))
    return Claimed(gate, jobs)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
