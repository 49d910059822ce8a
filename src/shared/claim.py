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

from arq.constants import in_progress_key_prefix, job_key_prefix

from shared import fair_share
from shared.queue import HORIZON_MS, PARK_BASE_MS, PARK_WIDTH_MS, PRIORITY_BANDS

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from arq.connections import ArqRedis

GATE_PREFIX: Final = "conveyor:gate:"
PARK_PREFIX: Final = "conveyor:park:"  # the order of parked jobs: a counter per queue (see _CLAIM)

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

# KEYS[1] the queue's sorted set, KEYS[2] the gate, KEYS[3] the queue's owner shares (`shared.fair_share`),
# KEYS[4] the parking counter, then per candidate its in-progress key and its arq job key; ARGV[1] now (ms),
# ARGV[2] lease (ms), ARGV[3] how many to take, ARGV[4] '1' to honour the shares, ARGV[5] the parking base,
# ARGV[6] the parking width, ARGV[7] and ARGV[8] the lowest scores of the normal and low bands, ARGV[9..] the
# candidates' ids, in order. Returns {gate, held, due, id1, score1, id2, score2, ...}: gate is 1 open, 0
# paused, -1 unknown (nothing is taken then); held, how many candidates were parked; due, when nothing was
# taken but something held, how many due entries the queue has.
#
# A candidate is taken when nobody holds it and it is still in the queue and due, exactly arq's own check,
# and its owner may start another job. The owner is read from the head of arq's job record (the envelope
# puts it first, see `shared.queue.envelope`); a record without it found there has no limit. A candidate
# whose owner may not start one is parked: re-scored behind every band, in its own priority's part of the
# parking region, behind what was parked before, so the jobs after it come into the read window and the
# owner's own jobs keep their priority order there. It stays queued.
_CLAIM: Final = r"""
local gate = redis.call('GET', KEYS[2])
if not gate then return {-1, 0, 0} end
if string.sub(gate, -5) ~= ':open' then return {0, 0, 0} end
local now, lease, wanted = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local shares = ARGV[4] == '1' and redis.call('EXISTS', KEYS[3]) == 1
local base, width = tonumber(ARGV[5]), tonumber(ARGV[6])
local normal_floor, low_floor = tonumber(ARGV[7]), tonumber(ARGV[8])
local top = base + 3 * width

local function owner_of(job_key)
  local head = redis.call('GETRANGE', job_key, 0, 1023)
  local _, stop = string.find(head, '"owner":"', 1, true)
  if not stop then return nil end
  local i = stop + 1
  while true do
    local j = string.find(head, '[\92\34]', i)
    if not j then return nil end
    if string.byte(head, j) == 34 then return string.sub(head, stop + 1, j - 1) end
    i = j + 2
  end
end

local function rank(score)
  local r
  if score < top then r = math.floor((score - base) / width)
  elseif score > low_floor then r = 2
  elseif score > normal_floor then r = 1
  else r = 0 end
  if r < 0 then return 0 elseif r > 2 then return 2 end
  return r
end

local left, taken, got, held, seq = {}, {}, 0, 0, nil
for i = 1, (#KEYS - 4) / 2 do
  if got >= wanted then break end
  local id, lease_key, job_key = ARGV[i + 8], KEYS[2 * i + 3], KEYS[2 * i + 4]
  if redis.call('EXISTS', lease_key) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= now then
      local owner = shares and owner_of(job_key)
      local quota = false
      if owner then
        quota = left[owner]
        if quota == nil then
          quota = tonumber(redis.call('HGET', KEYS[3], owner)) or false
          left[owner] = quota
        end
      end
      if not quota or quota > 0 then
        redis.call('SET', lease_key, '1', 'PX', lease)
        taken[#taken + 1] = id
        taken[#taken + 1] = score
        got = got + 1
        if quota then
          left[owner] = quota - 1
          redis.call('HINCRBY', KEYS[3], owner, -1)
        end
      else
        if not seq then seq = tonumber(redis.call('GET', KEYS[4]) or '0') end
        seq = seq + 1
        local parked = base + rank(tonumber(score)) * width + seq
        redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', parked), id)
        held = held + 1
      end
    end
  end
end
if seq then redis.call('SET', KEYS[4], string.format('%.0f', seq)) end
local due = 0
if got == 0 and held > 0 then due = redis.call('ZCOUNT', KEYS[1], '-inf', now) end
local reply = {1, held, due}
for _, v in ipairs(taken) do reply[#reply + 1] = v end
return reply
"""


class Gate(StrEnum):
    OPEN = "open"
    PAUSED = "paused"
    UNKNOWN = "unknown"  # no gate in Redis yet: the ledger's state has not been copied


_GATE_REPLY: Final = {1: Gate.OPEN, 0: Gate.PAUSED, -1: Gate.UNKNOWN}


@dataclass(frozen=True, slots=True)
class Claimed:
    """What one claim call found: the gate's state and the jobs it took (id, arq score), in candidate order;
    how many candidates it parked because their owner had used its share, and (when it took none and parked
    some) how many due entries the queue holds, which tells the worker how far parking has to go round."""

    gate: Gate
    jobs: tuple[tuple[str, int], ...] = ()
    held: int = 0
    due: int = 0


def gate_key(queue: str) -> str:
    return GATE_PREFIX + queue


def park_key(queue: str) -> str:
    return PARK_PREFIX + queue


async def set_gate(redis: ArqRedis, queue: str, *, version: int, paused: bool) -> int | None:
    """Copy a pause flag (at `version`) to the queue's gate. None once written; the gate's own version when it
    already holds a newer one (and keeps it): see `shared.pause` for how the ledger still wins then."""
    state = Gate.PAUSED if paused else Gate.OPEN
    reply = int(await cast("Awaitable[Any]", redis.eval(_SET_GATE, 1, gate_key(queue), str(version), state.value)))
    return None if reply < 0 else reply


async def claim(
    redis: ArqRedis,
    queue_key: str,
    queue: str,
    candidates: Sequence[str],
    *,
    limit: int,
    lease_ms: int,
    now_ms: int,
    shares: bool = True,
) -> Claimed:
    """Take up to `limit` of `candidates` (due ids, best first) for this worker, if the queue's gate is open.

    Each job taken gets arq's in-progress key (the lease) in the same atomic step, so no two workers take
    one job, and no job starts once a pause has reached the gate. With `shares`, no job is taken whose
    owner has used its fair share of the queue (`shared.fair_share`); such candidates are parked instead.
    """
    keys = [queue_key, gate_key(queue), fair_share.share_key(queue), park_key(queue)]
    for job_id in candidates:
        keys += (in_progress_key_prefix + job_id, job_key_prefix + job_id)
    bands = [str(now_ms + HORIZON_MS - PRIORITY_BANDS[p]) for p in ("high", "normal")]
    args = [
        str(now_ms), str(lease_ms), str(limit), "1" if shares else "0", str(PARK_BASE_MS), str(PARK_WIDTH_MS),
        *bands, *candidates,
    ]  # fmt: skip
    reply = await cast("Awaitable[list[Any]]", redis.eval(_CLAIM, len(keys), *keys, *args))
    gate = _GATE_REPLY[int(reply[0])]
    if len(reply) < 3:
        return Claimed(gate)
    pairs = reply[3:]
    jobs = tuple((_text(pairs[i]), int(float(pairs[i + 1]))) for i in range(0, len(pairs), 2))
    return Claimed(gate, jobs, held=int(reply[1]), due=int(reply[2]))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
