"""The enqueue side's only arq import: open the jobs pool, enqueue a ledger record, check what Redis holds."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Protocol, TypeVar, cast

from arq.connections import ArqRedis, RedisSettings
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms, to_ms, to_unix_ms
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.core import json
from shared.core.settings import RedisConfig
from shared.infra import wakeup

# One arq function per worker process dispatches on the job type; see workers.runtime for why.
RUN_FUNCTION: Final = "conveyor.run"
QUEUE_PREFIX: Final = "conveyor:queue:"
# A worker that has not beaten for this long no longer counts as live.
WORKER_TTL_S: Final = 10.0


class QueuedJob(Protocol):
    """What the broker reads of a ledger record (shared.ledger.records.JobRecord) to put it on its queue."""

    @property
    def id(self) -> str: ...
    @property
    def arq_id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def owner(self) -> str: ...
    @property
    def priority(self) -> str: ...
    @property
    def payload(self) -> dict[str, Any]: ...
    @property
    def attempts(self) -> int: ...
    @property
    def max_attempts(self) -> int: ...
    @property
    def timeout_s(self) -> float: ...
    @property
    def generation(self) -> int: ...
    @property
    def batch_id(self) -> str | None: ...
    @property
    def scheduled_for(self) -> dt.datetime: ...
    @property
    def expires_at(self) -> dt.datetime | None: ...
    @property
    def request_id(self) -> str | None: ...


J = TypeVar("J", bound=QueuedJob)


def queue_key(queue: str) -> str:
    return QUEUE_PREFIX + queue


def serialize(value: dict[str, Any]) -> bytes:
    """arq's job and result records as JSON: no pickle, readable with redis-cli."""
    return json.dumps(value)


def deserialize(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise TypeError("an arq record must be a JSON object")
    return value


def jobs_redis(config: RedisConfig, *, queue: str = "default") -> ArqRedis:
    settings = RedisSettings.from_dsn(config.jobs_url)
    return ArqRedis(
        host=settings.host,
        port=settings.port,
        db=settings.database,
        username=settings.username,
        password=settings.password,
        ssl=settings.ssl,
        socket_connect_timeout=config.connect_timeout_s,
        socket_timeout=config.connect_timeout_s * 2,
        # A blip (failover, restart, dropped connection) is retried quickly instead of failing the caller.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=queue_key(queue),
    )


@asynccontextmanager
async def open_jobs_redis(config: RedisConfig, *, queue: str = "default") -> AsyncIterator[ArqRedis]:
    """The db 1 client (arq queues and results); connects lazily, so a Redis outage does not stop start-up."""
    client = jobs_redis(config, queue=queue)
    try:
        yield client
    finally:
        await client.aclose(close_connection_pool=True)


def envelope(job: QueuedJob) -> dict[str, Any]:
    """What a worker needs to run one attempt without reading the ledger first.

    The owner comes first: the claim script reads it from the head of arq's job record (`shared.infra.claim`),
    whatever size the payload is.
    """
    return {
        "owner": job.owner,
        "id": job.id,
        "generation": job.generation,
        "batch_id": job.batch_id,
        "priority": job.priority,
        "type": job.type,
        "payload": job.payload,
        "max_attempts": job.max_attempts,
        "timeout_s": job.timeout_s,
        "expires_at": json.rfc3339(job.expires_at),
        "request_id": job.request_id,
    }


# Priorities live in arq's one sorted set per queue: a job's score is its due time (ms) minus its
# priority's band. Bands are a century apart, far more than any due time can spread (delays are capped
# at 366 days), so the due jobs of each priority sit in their own score window; the worker reads the
# windows high first (see `due_windows`). Within a priority, jobs start in due-time order.
BAND_MS: Final = 100 * 365 * 24 * 3600 * 1000
PRIORITY_BANDS: Final = {"high": 2 * BAND_MS, "normal": BAND_MS, "low": 0}
HORIZON_MS: Final = 400 * 24 * 3600 * 1000  # beyond the furthest due time a job may have
JOB_KEY_EXTRA: Final = dt.timedelta(days=1)  # how long arq keeps a job's record past its due time
# Below every band lies the parking region: due jobs held back by their owner's fair share (`shared.infra.claim`),
# read after every band, in the order they were parked: PARK_BASE_MS + the park time in ms * 1000 + a count.
# Every parked score stays an exact integer as a double and below PARK_TOP_MS (until the 2230s), which is
# far below the high band's lowest.
PARK_BASE_MS: Final = -8_700_000_000_000_000
PARK_TOP_MS: Final = PARK_BASE_MS + 8_400_000_000_000_000


def retry_defer_s(defer_s: float, priority: str) -> float:
    """The `Retry(defer=...)` that puts a job back `defer_s` from now in its own priority band.

    arq moves a retried job to `now + defer`; subtracting the band keeps it among its priority's jobs.
    """
    return defer_s - PRIORITY_BANDS.get(priority, BAND_MS) / 1000


class Lua:
    """A Lua script run by its digest (EVALSHA): its body crosses the wire once per Redis server (again after a
    restart or SCRIPT FLUSH, when Redis answers NOSCRIPT), not on every call. redis-py's `register_script` does
    the same but binds the script to one client; this one is shared by every client of the process."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, redis: Redis, keys: Sequence[str], args: Sequence[str | bytes]) -> Any:
        values: list[Any] = [*keys, *args]
        try:
            return await cast("Awaitable[Any]", redis.evalsha(self.sha, len(keys), *values))
        except NoScriptError:
            await cast("Awaitable[Any]", redis.script_load(self.source))
            return await cast("Awaitable[Any]", redis.evalsha(self.sha, len(keys), *values))


# What arq's `enqueue_job` does, on arq's keys, for many jobs in one call. Per job, KEYS: its arq record, its
# result record, its queue's sorted set; ARGV: the record, its expiry (ms), its score, its id, and the queue's
# wake-up channel when the job is due now (else ''). A job whose record or result Redis holds is refused (0),
# as arq refuses it; else it is added (1). Each channel of an added due job gets one PUBLISH (see
# `shared.infra.wakeup`); a job due later needs none, the polls find it.
_ENQUEUE: Final = Lua("""
local added, woken = {}, {}
for i = 0, #KEYS / 3 - 1 do
  local record, expiry, score, id, channel = ARGV[5 * i + 1], ARGV[5 * i + 2], ARGV[5 * i + 3], ARGV[5 * i + 4],
    ARGV[5 * i + 5]
  if redis.call('EXISTS', KEYS[3 * i + 1], KEYS[3 * i + 2]) == 0 then
    redis.call('SET', KEYS[3 * i + 1], record, 'PX', expiry)
    redis.call('ZADD', KEYS[3 * i + 3], score, id)
    added[i + 1] = 1
    if channel ~= '' then woken[channel] = true end
  else
    added[i + 1] = 0
  end
end
for channel in pairs(woken) do redis.call('PUBLISH', channel, '') end
return added
""")
# Jobs per enqueue call: a bounded script run, however many a batch holds.
ENQUEUE_CHUNK: Final = 200


def _enqueue_call(
    redis: ArqRedis, job: QueuedJob, now: dt.datetime, now_ms: int
) -> tuple[list[str], list[str | bytes]]:
    """The keys and arguments of one job in `_ENQUEUE`: arq's record (function, args, job_try, enqueue time) and
    score as `enqueue_job` would write them, with the score banded by priority and the expiry from the due time."""
    due = max(job.scheduled_for, now)
    score = to_unix_ms(due - dt.timedelta(milliseconds=PRIORITY_BANDS[job.priority]))
    expiry = to_ms(due - now + JOB_KEY_EXTRA)  # arq would derive a negative expiry from a banded score
    job_try = job.attempts + 1 if job.attempts else None
    record = serialize_job(RUN_FUNCTION, (envelope(job),), {}, job_try, now_ms, serializer=serialize)
    channel = wakeup.channel(redis, job.queue) if due <= now else ""
    keys = [job_key_prefix + job.arq_id, result_key_prefix + job.arq_id, queue_key(job.queue)]
    return keys, [record, str(expiry), str(score), job.arq_id, channel]


async def enqueue(redis: ArqRedis, job: QueuedJob) -> bool:
    """Put a ledger record on its arq queue; False when arq already holds it (queued or with a result).

    A retrying or rescheduled job goes back at its `scheduled_for` time with its attempt count carried on. One
    EVALSHA: the record, the queue entry and the wake-up of the queue's idle workers (`shared.infra.wakeup`).
    """
    return (await enqueue_many(redis, [job]))[0]


async def enqueue_many(redis: ArqRedis, jobs: Sequence[QueuedJob]) -> list[bool]:
    """`enqueue` for many jobs (of any queues) in one call per ENQUEUE_CHUNK jobs: for each, in order, False
    when arq already holds it. A job of `jobs` named twice is added once (the second is refused)."""
    now = json.utcnow()
    now_ms = timestamp_ms()
    added: list[bool] = []
    for start in range(0, len(jobs), ENQUEUE_CHUNK):
        keys: list[str] = []
        args: list[str | bytes] = []
        for job in jobs[start : start + ENQUEUE_CHUNK]:
            job_keys, job_args = _enqueue_call(redis, job, now, now_ms)
            keys += job_keys
            args += job_args
        added += [bool(int(flag)) for flag in await _ENQUEUE(redis, keys, args)]
    return added


def due_windows(now_ms: int) -> list[tuple[str, str]]:
    """The score windows of the due jobs, in the order they are served: high priority, then normal, then low,
    each in due-time order; then the parked ones (held back by their owner's share), in the order parked."""
    return [
        (str(PARK_TOP_MS), str(now_ms - PRIORITY_BANDS["high"])),
        (str(now_ms + HORIZON_MS - PRIORITY_BANDS["high"]), str(now_ms - PRIORITY_BANDS["normal"])),
        (str(now_ms + HORIZON_MS - PRIORITY_BANDS["normal"]), str(now_ms)),
        ("-inf", f"({PARK_TOP_MS}"),
    ]


async def due_job_ids(redis: ArqRedis, queue_name: str, *, limit: int) -> list[bytes]:
    """Ids of due jobs, in the order `due_windows` serves them (a read for tools and tests; a worker's claim
    reads them itself, in the same call that takes them)."""
    async with redis.pipeline(transaction=False) as pipe:
        for low, high in due_windows(timestamp_ms()):
            pipe.zrangebyscore(queue_name, low, high, start=0, num=limit)
        found = await pipe.execute()
    return [job_id for ids in found for job_id in ids][:limit]


async def missing_from_redis(redis: ArqRedis, jobs: Sequence[J]) -> list[J]:
    """The jobs whose arq record Redis no longer holds."""
    if not jobs:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for job in jobs:
            pipe.exists(job_key_prefix + job.arq_id)
        found = await pipe.execute()
    return [job for job, exists in zip(jobs, found, strict=True) if not exists]


async def drop_result(redis: ArqRedis, job: QueuedJob) -> None:
    """Forget arq's stored outcome of the job, so that arq accepts its id again."""
    await redis.delete(result_key_prefix + job.arq_id)


async def withdraw(redis: ArqRedis, job: QueuedJob, *, running: bool) -> None:
    """Take a cancelled job off its queue; if it was running, ask the worker running it to stop.

    The abort marker is arq's own (`arq:abort`): a worker polling with aborts allowed cancels the
    running task, which sees `asyncio.CancelledError`. A job not yet started gets no marker (arq would
    keep it forever); a worker that claims it in the meantime finds it cancelled in the ledger.
    """
    # A job the ledger calls running may have no live worker any more (SIGKILL): no marker then, or it
    # would sit in arq's abort set for ever; arq only clears markers of tasks it finds.
    running = running and bool(await redis.exists(in_progress_key_prefix + job.arq_id))
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(queue_key(job.queue), job.arq_id)
        if running:
            pipe.zadd(abort_jobs_ss, {job.arq_id: timestamp_ms()})
        else:
            pipe.delete(job_key_prefix + job.arq_id)
        await pipe.execute()


async def trim_abort_markers(redis: ArqRedis, *, older_than_s: float) -> int:
    """Drop cancel markers no worker picked up (its task ended first); arq never ages them out itself."""
    return int(await redis.zremrangebyscore(abort_jobs_ss, "-inf", timestamp_ms() - int(older_than_s * 1000)))


def workers_key(queue: str) -> str:
    return f"conveyor:workers:{queue}"


def worker_member(worker_id: str, slots: int) -> str:
    """A live worker's entry in its queue's set: its id and how many jobs it runs at once (its slots)."""
    return f"{worker_id}/{slots}"


async def heartbeat(redis: ArqRedis, queue: str, member: str, *, ttl_s: float) -> int:
    """Record that `member` (see `worker_member`) serves `queue` now; members silent for `ttl_s` are dropped.

    Returns the slots of every live worker of the queue: what a fair share is a share of.
    """
    now = timestamp_ms()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zadd(workers_key(queue), {member: now})
        pipe.zremrangebyscore(workers_key(queue), "-inf", now - int(ttl_s * 1000))
        pipe.zrange(workers_key(queue), 0, -1)
        members = (await pipe.execute())[2]
    return sum(_slots(m.decode() if isinstance(m, bytes) else m) for m in members)


def _slots(member: str) -> int:
    _, _, slots = member.rpartition("/")
    return int(slots) if slots.isdigit() else 1


async def leave(redis: ArqRedis, queue: str, member: str) -> None:
    await redis.zrem(workers_key(queue), member)


async def live_workers(redis: ArqRedis, queue: str, *, ttl_s: float) -> int:
    return int(await redis.zcount(workers_key(queue), timestamp_ms() - int(ttl_s * 1000), "+inf"))


async def drop_results(redis: ArqRedis, arq_ids: Sequence[str]) -> None:
    """Forget arq's stored outcomes of many jobs, by their arq ids (after they are cleaned from the ledger)."""
    for start in range(0, len(arq_ids), 500):
        await redis.delete(*(result_key_prefix + arq_id for arq_id in arq_ids[start : start + 500]))


async def renew_leases(redis: ArqRedis, arq_ids: Sequence[str], *, lease_s: float) -> None:
    """Extend the lease (arq's in-progress key) of every job this worker runs.

    arq sets that key for the longest job timeout of the queue; a worker holding it short and renewing it
    lets another worker take over a job within one lease when its worker dies (SIGKILL, OOM, lost host).
    """
    if not arq_ids:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for arq_id in arq_ids:
            pipe.pexpire(in_progress_key_prefix + arq_id, int(lease_s * 1000))
        await pipe.execute()
