"""Taking jobs off a queue: one Lua call that checks the queue's start gate, reads its due jobs and claims them,
atomically.

The ledger (`queues` table) is the durable record of a queue's pause flag; the gate is its copy in Redis db 1,
next to arq's keys, so that the check which allows a start happens inside the claim itself. The gate holds
`<version>:open` or `<version>:paused`; the version grows with every pause or resume in the ledger, and a
write carrying an older version than the gate's is refused, so a worker re-copying the ledger can never
undo a newer pause (`shared.ledger.pause` publishes the ledger's flag). A queue with no gate (Redis restarted
empty, or flushed) starts nothing until a worker has copied the ledger's state again: the gate fails closed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final

from arq.constants import in_progress_key_prefix, job_key_prefix

from shared.infra import fair_share, wakeup
from shared.infra.broker import PARK_BASE_MS, PARK_TOP_MS, Lua, due_windows

if TYPE_CHECKING:
    from arq.connections import ArqRedis

GATE_PREFIX: Final = "conveyor:gate:"
# Parking (see _CLAIM): per queue, the set of owners with parked jobs, and per owner the index of its parked
# jobs, scored by the score each had before it was parked (so an owner's own priority order holds there).
PARKERS_PREFIX: Final = "conveyor:parkers:"
PARKED_PREFIX: Final = "conveyor:parked:"
PARKED_TTL_MS: Final = 24 * 3600 * 1000  # as long as arq keeps a job's record past its due time

# KEYS[1] the gate; ARGV[1] version, ARGV[2] 'open' | 'paused', ARGV[3] the queue's wake-up channel. Returns -1
# if written, else the gate's own (newer) version, which it keeps. A gate that opens (from paused, or from none)
# wakes the queue's workers: their due jobs may start now (`shared.infra.wakeup`).
_SET_GATE: Final = Lua("""
local current = redis.call('GET', KEYS[1])
if current then
  local version = tonumber(string.match(current, '^(%d+):'))
  if version and version > tonumber(ARGV[1]) then return version end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2])
if ARGV[2] == 'open' and (not current or string.sub(current, -5) ~= ':open') then
  redis.call('PUBLISH', ARGV[3], '')
end
return -1
""")

# KEYS[1] the queue's sorted set, KEYS[2] the gate, KEYS[3] the queue's owner shares (`shared.infra.fair_share`),
# KEYS[4] the queue's parking owners, KEYS[5] its tried jobs; ARGV[1] now (ms), ARGV[2] lease (ms), ARGV[3] how
# many to take, ARGV[4] '1' to honour the shares, ARGV[5] the parking base, ARGV[6] the top of the parking region,
# ARGV[7] the prefix of the owners' parking indexes, ARGV[8] their expiry (ms), ARGV[9] arq's in-progress key
# prefix, ARGV[10] arq's job key prefix, ARGV[11] how many due ids to read, ARGV[12..19] the four windows they are
# read from, in order (`shared.infra.broker.due_windows`: the bands high, normal, low, then the parked jobs), each
# a pair of ZRANGEBYSCORE bounds; ARGV[20] how many ids follow of the jobs the worker runs, then those ids; then,
# when ARGV[11] is 0, the candidates' ids, in order, instead of the read. Returns
# {gate, held, parked, id1, score1, id2, score2, ...}: gate is 1 open, 0 paused, -1 unknown (nothing is taken
# then); held, how many due jobs were passed over because their owner had used its share; parked, how many of
# them this call parked.
#
# The read happens here, window by window and only as far as needed (it stops once enough are taken), so a poll
# is one call; a window's read sees what the earlier ones changed, so a job this call parked is not looked at
# again in the parked window. The parked window is read after the owners' indexes have been served (a job there
# that is in no index, its index having lapsed, is still taken from the window).
#
# A job is taken when nobody holds it and it is still in the queue and due, exactly arq's own check, and its
# owner may start another job. The owner is read from the head of arq's job record (the envelope puts it
# first, see `shared.infra.broker.envelope`); a record without it found there has no limit. A due job whose owner
# may not start one is parked: re-scored into the parking region below every band, in the order parked, so
# the jobs behind it come into the read window; it stays queued, and goes into its owner's parking index,
# scored as it was before. A parked job is never moved again. An owner that may start jobs is served from its
# index, best first: before any of its own candidates that scores lower, and after the candidates (however
# far back its parked jobs stand). So an owner's jobs keep their priority order, and no owner waits behind
# another's parked backlog.
_CLAIM: Final = Lua(r"""
local gate = redis.call('GET', KEYS[2])
if not gate then return {-1, 0, 0} end
if string.sub(gate, -5) ~= ':open' then return {0, 0, 0} end
local now, lease, wanted = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
-- Parked jobs are served from their owners' indexes whenever any are parked, shares or none: with no shares
-- every owner may start jobs, and a parked job must not wait behind the bands for a window to reach it.
-- Mostly neither shares nor parked jobs exist: one EXISTS says so.
local shares, indexed = false, false
if redis.call('EXISTS', KEYS[3], KEYS[4]) > 0 then
  shares = ARGV[4] == '1' and redis.call('EXISTS', KEYS[3]) == 1
  indexed = redis.call('EXISTS', KEYS[4]) == 1
end
local base, top, prefix, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8]
local lease_prefix, job_prefix, reading = ARGV[9], ARGV[10], tonumber(ARGV[11])
-- The jobs this worker runs itself: held, and passed over without a look at their leases.
local own, listed = {}, 21 + tonumber(ARGV[20])
for i = 21, listed - 1 do own[ARGV[i]] = true end

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

local left, taken, tried, got, held, parked = {}, {}, {}, 0, 0, 0
local just_parked = {}

-- false: the owner has no limit; else how many more jobs it may start
local function quota_of(owner)
  if not shares or not owner then return false end
  local quota = left[owner]
  if quota == nil then
    quota = tonumber(redis.call('HGET', KEYS[3], owner)) or false
    left[owner] = quota
  end
  return quota
end

local function may_start(owner)
  local quota = quota_of(owner)
  return not quota or quota > 0
end

-- A job whose lease this call has set: noted as taken (and tried), counted against its owner's share.
local function note(id, score, owner)
  tried[#tried + 1] = now
  tried[#tried + 1] = id
  taken[#taken + 1] = id
  taken[#taken + 1] = score
  got = got + 1
  local quota = quota_of(owner)
  if quota then
    left[owner] = quota - 1
    redis.call('HINCRBY', KEYS[3], owner, -1)
  end
end

local function take(id, score, owner, lease_key)
  redis.call('SET', lease_key, '1', 'PX', lease)
  note(id, score, owner)
end

-- Per owner that may start jobs, its best parked job still waiting (false: none):
-- {id, prior score, parked score, prior score as stored}.
local heads, skips = nil, {}

local function head(owner)
  local index = prefix .. owner
  while true do
    local entry = redis.call('ZRANGEBYSCORE', index, '-inf', '+inf', 'WITHSCORES', 'LIMIT', skips[owner] or 0, 1)
    if #entry == 0 then
      if redis.call('EXISTS', index) == 0 then redis.call('SREM', KEYS[4], owner) end
      return false
    end
    local id = entry[1]
    local score = redis.call('ZSCORE', KEYS[1], id)
    if not score or tonumber(score) >= top then
      redis.call('ZREM', index, id)  -- gone from the queue, or back in a band (arq put it back): not parked
    elseif redis.call('EXISTS', lease_prefix .. id) == 1 then
      skips[owner] = (skips[owner] or 0) + 1  -- running
    else
      return {id, tonumber(entry[2]), score, entry[2]}
    end
  end
end

-- Take parked jobs whose prior score is at most `upto`, best first across the owners that may start jobs.
local function serve_parked(upto)
  if not heads then
    heads = {}
    for _, owner in ipairs(redis.call('SMEMBERS', KEYS[4])) do
      if may_start(owner) then heads[owner] = head(owner) end
    end
  end
  while got < wanted do
    local best, best_owner = nil, nil
    for owner, h in pairs(heads) do
      if h and h[2] <= upto and may_start(owner)
          and (not best or h[2] < best[2] or (h[2] == best[2] and owner < best_owner)) then
        best, best_owner = h, owner
      end
    end
    if not best then return end
    redis.call('ZREM', prefix .. best_owner, best[1])
    -- Back at the score it had before it was parked: should its worker die, the job is found there again.
    redis.call('ZADD', KEYS[1], 'XX', best[4], best[1])
    take(best[1], best[4], best_owner, lease_prefix .. best[1])
    heads[best_owner] = head(best_owner)
  end
end

-- The next candidate and its score as stored (nil once there is none): read window by window, or listed.
local window, batch, pos, seen = 0, {}, 1, 0
local function next_candidate()
  if reading == 0 then
    while true do
      local id = ARGV[listed + seen]
      if not id then return nil end
      seen = seen + 1
      local score = not own[id] and redis.call('ZSCORE', KEYS[1], id)
      if score then return id, score end
    end
  end
  while true do
    if pos > #batch then
      if seen >= reading or window >= 4 then return nil end
      if window == 3 and indexed then
        -- The parked jobs in their owners' indexes first, best first across owners: when they fill the free
        -- slots, the parking region (a backlog of held jobs, each costing a read of its owner) is not walked.
        serve_parked(math.huge)
        if got >= wanted then return nil end
      end
      window = window + 1
      batch = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[10 + 2 * window], ARGV[11 + 2 * window], 'WITHSCORES',
        'LIMIT', 0, reading - seen)
      pos = 1
    else
      local id, score = batch[pos], batch[pos + 1]
      pos = pos + 2
      if not just_parked[id] and not own[id] then
        seen = seen + 1
        return id, score
      end
    end
  end
end

while got < wanted do
  local id, score = next_candidate()
  if not id then break end
  local lease_key, value = lease_prefix .. id, tonumber(score)
  local in_band = value >= top
  if value > now then  -- not due (a listed candidate): left alone
  elseif in_band and not shares then
    -- No share to weigh: the lease alone decides, and SET NX is both arq's check and the take.
    if indexed then serve_parked(value) end
    if got >= wanted then break end
    if redis.call('SET', lease_key, '1', 'NX', 'PX', lease) then note(id, score, false) end
  elseif redis.call('EXISTS', lease_key) == 0 then
    local owner = owner_of(job_prefix .. id)
    if indexed and in_band then serve_parked(value) end
    if got >= wanted then break end
    if not may_start(owner) then
      held = held + 1
      if in_band then
        redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', base + now * 1000 + parked), id)
        redis.call('ZADD', prefix .. owner, score, id)
        redis.call('PEXPIRE', prefix .. owner, ttl)
        redis.call('SADD', KEYS[4], owner)
        redis.call('PEXPIRE', KEYS[4], ttl)
        parked = parked + 1
        just_parked[id] = true
      end
    elseif in_band or not owner then
      take(id, score, owner, lease_key)
    elseif not indexed or not redis.call('ZSCORE', prefix .. owner, id) then
      redis.call('ZREM', prefix .. owner, id)
      take(id, score, owner, lease_key)
    end  -- else a parked job of an owner that may start: served below, in priority order across owners
  end
end
if indexed and got < wanted then serve_parked(math.huge) end
-- The tried set is trimmed by its reader (`shared.infra.fair_share.standing`), not on every claim.
for i = 1, #tried, 1000 do
  redis.call('ZADD', KEYS[5], unpack(tried, i, math.min(i + 999, #tried)))
end
local reply = {1, held, parked}
for _, v in ipairs(taken) do reply[#reply + 1] = v end
return reply
""")


class Gate(StrEnum):
    OPEN = "open"
    PAUSED = "paused"
    UNKNOWN = "unknown"  # no gate in Redis yet: the ledger's state has not been copied


_GATE_REPLY: Final = {1: Gate.OPEN, 0: Gate.PAUSED, -1: Gate.UNKNOWN}


@dataclass(frozen=True, slots=True)
class Claimed:
    """What one claim call found: the gate's state and the jobs it took (id, arq score), in the order taken;
    how many due jobs it passed over because their owner had used its share (`held`), and how many of those
    it parked (`parked`). Held jobs none of which was parked mean every due job was looked at: nothing can be
    taken under the shares as they stand."""

    gate: Gate
    jobs: tuple[tuple[str, int], ...] = ()
    held: int = 0
    parked: int = 0


def gate_key(queue: str) -> str:
    return GATE_PREFIX + queue


def parkers_key(queue: str) -> str:
    return PARKERS_PREFIX + queue


def parked_prefix(queue: str) -> str:
    """The start of an owner's parking index key; the rest is the owner as arq's job record spells it."""
    return f"{PARKED_PREFIX}{queue}:"


async def set_gate(redis: ArqRedis, queue: str, *, version: int, paused: bool) -> int | None:
    """Copy a pause flag (at `version`) to the queue's gate. None once written; the gate's own version when it
    already holds a newer one (and keeps it): see `shared.ledger.pause` for how the ledger still wins then."""
    state = Gate.PAUSED if paused else Gate.OPEN
    reply = int(await _SET_GATE(redis, [gate_key(queue)], [str(version), state.value, wakeup.channel(redis, queue)]))
    return None if reply < 0 else reply


async def claim(
    redis: ArqRedis,
    queue_key: str,
    queue: str,
    candidates: Sequence[str] = (),
    *,
    read: int = 0,
    limit: int,
    lease_ms: int,
    now_ms: int,
    shares: bool = True,
    running: Collection[str] = (),
) -> Claimed:
    """Take up to `limit` due jobs for this worker, if the queue's gate is open: with `read`, of the first `read`
    due ids the script reads itself (`shared.infra.broker.due_windows`: best first), in the same call; else of
    `candidates` (due ids, best first). The worker's own `running` jobs are passed over at no cost (each of them
    heads the queue until it ends, and would otherwise be looked at by every poll).

    Each job taken gets arq's in-progress key (the lease) in the same atomic step, so no two workers take
    one job, and no job starts once a pause has reached the gate. With `shares`, no job is taken whose
    owner has used its fair share of the queue (`shared.infra.fair_share`); such candidates are parked instead,
    and owners that may start jobs are also served from their parked ones.
    """
    keys = [queue_key, gate_key(queue), fair_share.share_key(queue), parkers_key(queue), fair_share.tried_key(queue)]
    windows = [bound for window in due_windows(now_ms) for bound in window]
    args = [
        str(now_ms), str(lease_ms), str(limit), "1" if shares else "0", str(PARK_BASE_MS), str(PARK_TOP_MS),
        parked_prefix(queue), str(PARKED_TTL_MS), in_progress_key_prefix, job_key_prefix, str(read), *windows,
        str(len(running)), *running, *([] if read else candidates),
    ]  # fmt: skip
    reply = await _CLAIM(redis, keys, args)
    gate = _GATE_REPLY[int(reply[0])]
    pairs = reply[3:]
    jobs = tuple((_text(pairs[i]), int(float(pairs[i + 1]))) for i in range(0, len(pairs), 2))
    return Claimed(gate, jobs, held=int(reply[1]), parked=int(reply[2]))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
