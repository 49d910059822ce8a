"""The seam's own run of a job: the records of the jobs a claim took read together, the ends of concurrent runs
written together, arq's records kept.

The worker here is the seam's `ArqWorker` with the plainest read and claim (no gate, no priorities), so what is
counted is the run and its end; the real worker's paths (cancel, shutdown, lease take-over, retries by band)
have their own tests (test_job_control, test_processes, test_leases, test_priorities).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import Job, JobStatus
from arq.utils import timestamp_ms
from redis.asyncio import Redis

from shared.infra import broker
from support.helpers import eventually
from support.stack import Services, redis_config
from workers.arq_seam import ArqWorker, ClaimedJob, Retry, func

QUEUE = "conveyor:queue:seam-test"


# Takes a job still queued whose lease is free, setting its lease: one atomic step, as the real claim is.
TAKE = """
local score = redis.call('zscore', KEYS[1], ARGV[1])
if score and redis.call('set', KEYS[2], '1', 'PX', ARGV[2], 'NX') then return score end
return false
"""


class PlainWorker(ArqWorker):
    """Reads the due ids by score and takes each one still queued whose lease it can set."""

    async def due_ids(self, count: int) -> list[bytes]:
        return list(await self.jobs_redis.zrangebyscore(self.queue_name, "-inf", timestamp_ms(), start=0, num=count))

    async def claim(self, job_ids: list[str], *, free: int, lease_ms: int, now_ms: int) -> Sequence[ClaimedJob]:
        taken: list[ClaimedJob] = []
        for job_id in job_ids:
            if len(taken) == free:
                break
            score = await self.jobs_redis.eval(
                TAKE, 2, self.queue_name, in_progress_key_prefix + job_id, job_id, str(lease_ms)
            )  # type: ignore[misc]
            if score is not None:
                taken.append((job_id, int(score)))
        return taken


# The same, returning the job's arq record with its score, as a claim script that reads the record may.
TAKE_WITH_RECORD = """
local score = redis.call('zscore', KEYS[1], ARGV[1])
if score and redis.call('set', KEYS[2], '1', 'PX', ARGV[2], 'NX') then
  return {score, redis.call('get', KEYS[3])}
end
return false
"""


class RecordWorker(PlainWorker):
    """Takes the jobs as PlainWorker does and hands their records to the run."""

    async def claim(self, job_ids: list[str], *, free: int, lease_ms: int, now_ms: int) -> Sequence[ClaimedJob]:
        taken: list[ClaimedJob] = []
        for job_id in job_ids[:free]:
            keys = (self.queue_name, in_progress_key_prefix + job_id, job_key_prefix + job_id)
            found = await self.jobs_redis.eval(TAKE_WITH_RECORD, 3, *keys, job_id, str(lease_ms))  # type: ignore[misc]
            if found:
                taken.append((job_id, int(found[0]), found[1]))
        return taken


@dataclass
class Commands:
    """What Redis ran on the jobs database, as MONITOR saw it (commands inside Lua too)."""

    seen: list[list[str]] = field(default_factory=list)

    def named(self, name: str, key_prefix: str = "") -> list[list[str]]:
        return [c for c in self.seen if c[0].upper() == name and any(a.startswith(key_prefix) for a in c[1:])]


@pytest.fixture
async def arq_redis(services: Services, jobs_redis: Redis) -> AsyncIterator[ArqRedis]:
    async with broker.open_jobs_redis(redis_config(services), queue="seam-test") as client:
        yield client


@pytest.fixture
async def monitor(services: Services, jobs_redis: Redis) -> AsyncIterator[Callable[[], Awaitable[Commands]]]:
    """Starts watching the jobs database; the callable returns every command run up to that moment."""
    commands = Commands()
    client = Redis.from_url(services.jobs_url)
    listening = asyncio.Event()

    async def listen() -> None:
        async with client.monitor() as m:
            listening.set()
            async for entry in m.listen():
                if entry["db"] == services.jobs_db:
                    commands.seen.append(entry["command"].split())

    task = asyncio.create_task(listen())
    await asyncio.wait_for(listening.wait(), timeout=5)
    await jobs_redis.ping()

    async def upto_now() -> Commands:
        marker = f"seam-test-marker-{timestamp_ms()}"
        await jobs_redis.get(marker)  # MONITOR shows commands in the order Redis ran them: this one last
        await eventually(lambda: _found(commands, marker))
        return commands

    yield upto_now
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await client.aclose()


async def _found(commands: Commands, marker: str) -> bool | None:
    return True if any(marker in c for c in commands.seen) else None


@contextlib.asynccontextmanager
async def running(
    redis: ArqRedis,
    coroutine: Callable[..., Awaitable[Any]],
    *,
    max_jobs: int = 10,
    keep_result: int = 60,
    kind: type[PlainWorker] = PlainWorker,
) -> AsyncIterator[PlainWorker]:
    worker = kind(
        functions=[func(coroutine, name="seam.test")],  # type: ignore[arg-type] # arq's WorkerCoroutine protocol
        queue_name=QUEUE, redis_pool=redis, handle_signals=False, allow_abort_jobs=True, max_jobs=max_jobs,
        poll_delay=0.01, keep_result=keep_result, job_serializer=broker.serialize,
        job_deserializer=broker.deserialize, lease_s=5,
    )  # fmt: skip
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        worker.drain()
        await asyncio.wait_for(task, timeout=10)


async def _enqueue(redis: ArqRedis, job_id: str, *args: Any) -> None:
    assert await redis.enqueue_job("seam.test", *args, _job_id=job_id, _queue_name=QUEUE) is not None


async def _left(redis: Redis, job_id: str) -> list[str]:
    """arq's keys of a job still in Redis, besides its result."""
    keys = [job_key_prefix + job_id, in_progress_key_prefix + job_id, f"arq:retry:{job_id}"]
    found = [k for k in keys if await redis.exists(k)]
    return found + (["queued"] if await redis.zscore(QUEUE, job_id) is not None else [])


async def test_concurrent_runs_end_in_few_round_trips_and_leave_only_their_results(
    arq_redis: ArqRedis, jobs_redis: Redis, monitor: Callable[[], Awaitable[Commands]]
) -> None:
    crowd = 20
    release = asyncio.Event()

    async def hold(ctx: dict[str, Any], n: int) -> dict[str, int]:
        await release.wait()
        return {"n": n, "try": ctx["job_try"]}

    for n in range(crowd):
        await _enqueue(arq_redis, f"crowd-{n}", n)
    await _enqueue(arq_redis, "gone", -1)
    await jobs_redis.delete(job_key_prefix + "gone")  # its record expired before any worker took it

    async with running(arq_redis, hold, max_jobs=crowd + 1) as worker:
        await eventually(lambda: _all_running(worker, crowd))
        release.set()
        await eventually(lambda: _completed(worker, crowd))
        seen = await monitor()

        finishes = seen.named("DEL", in_progress_key_prefix)
        assert len(finishes) <= 4, f"{crowd + 1} ends took {len(finishes)} writes"  # one write each, before
        assert worker.finish_writes == len(finishes)
        for n in range(crowd):
            job = Job(f"crowd-{n}", arq_redis, _queue_name=QUEUE, _deserializer=broker.deserialize)
            assert await job.status() == JobStatus.complete
            assert await job.result(timeout=1) == {"n": n, "try": 1}
            assert await _left(jobs_redis, f"crowd-{n}") == []
        assert await _left(jobs_redis, "gone") == [], "a job whose record is gone is finished, as arq does"
        assert not seen.named("INCR", "arq:retry:")
        assert not seen.named("INCRBY", "arq:retry:")
        assert worker.completed == crowd


async def _all_running(worker: ArqWorker, crowd: int) -> bool | None:
    return True if len(worker.running_job_ids()) == crowd else None


async def test_a_retry_moves_the_job_by_its_delay_and_frees_its_lease_with_no_retry_counter(
    arq_redis: ArqRedis, jobs_redis: Redis
) -> None:
    runs: list[int] = []

    async def retry_once(ctx: dict[str, Any]) -> str:
        runs.append(ctx["job_try"])
        if len(runs) == 1:
            raise Retry(defer=3600)
        return "second"

    await _enqueue(arq_redis, "later")
    before = timestamp_ms()
    async with running(arq_redis, retry_once) as worker:
        await eventually(lambda: _moved(jobs_redis, "later", before))
        after = timestamp_ms()

        score = await jobs_redis.zscore(QUEUE, "later")
        assert score is not None
        assert before + 3_600_000 <= score <= after + 3_600_000
        assert await _left(jobs_redis, "later") == [job_key_prefix + "later", "queued"]  # no lease, no counter
        assert not await jobs_redis.exists(result_key_prefix + "later")
        await jobs_redis.zadd(QUEUE, {"later": timestamp_ms()})  # its time has come
        await eventually(lambda: _has(jobs_redis, result_key_prefix + "later"))
        assert runs == [1, 1]
        assert await _left(jobs_redis, "later") == []
        assert worker.completed == 1


async def _moved(redis: Redis, job_id: str, since: int) -> bool | None:
    score = await redis.zscore(QUEUE, job_id)
    lease = await redis.exists(in_progress_key_prefix + job_id)
    return True if score is not None and score > since + 60_000 and not lease else None


async def _has(redis: Redis, key: str) -> bool | None:
    return True if await redis.exists(key) else None


async def test_with_results_off_a_run_leaves_nothing_and_idle_polls_never_read_the_abort_set(
    arq_redis: ArqRedis, jobs_redis: Redis, monitor: Callable[[], Awaitable[Commands]]
) -> None:
    async def echo(ctx: dict[str, Any], value: str) -> str:
        return value

    async with running(arq_redis, echo, keep_result=0) as worker:
        await eventually(lambda: _polled(monitor, 5))
        assert not (await monitor()).named("ZRANGE", "arq:abort"), "no job runs: nothing to cancel"
        await _enqueue(arq_redis, "plain", "x")
        await eventually(lambda: _completed(worker, 1))
        assert await _left(jobs_redis, "plain") == []
        assert await jobs_redis.keys(result_key_prefix + "*") == []


async def _polled(monitor: Callable[[], Awaitable[Commands]], polls: int) -> bool | None:
    return True if len((await monitor()).named("ZRANGEBYSCORE", QUEUE)) >= polls else None


async def _completed(worker: ArqWorker, count: int) -> bool | None:
    return True if worker.completed == count and not worker.running else None


async def test_a_job_whose_record_came_with_its_claim_is_run_without_reading_it_again(
    arq_redis: ArqRedis, jobs_redis: Redis, monitor: Callable[[], Awaitable[Commands]]
) -> None:
    async def echo(ctx: dict[str, Any], value: str) -> str:
        return value

    async with running(arq_redis, echo, kind=RecordWorker) as worker:
        await _enqueue(arq_redis, "carried", "y")
        await eventually(lambda: _completed(worker, 1))
        seen = await monitor()

    job = Job("carried", arq_redis, _queue_name=QUEUE, _deserializer=broker.deserialize)
    assert await job.result(timeout=1) == "y"
    reads = [c for c in seen.named("GET", job_key_prefix) if c[1] == job_key_prefix + "carried"]
    assert len(reads) == 1, "read once, by the claim"
    assert await _left(jobs_redis, "carried") == []


async def test_the_jobs_a_claim_takes_have_their_records_read_together_not_one_get_each(
    arq_redis: ArqRedis, monitor: Callable[[], Awaitable[Commands]]
) -> None:
    crowd = 12
    release = asyncio.Event()

    async def hold(ctx: dict[str, Any], n: int) -> int:
        await release.wait()
        return n

    for n in range(crowd):
        await _enqueue(arq_redis, f"many-{n}", n)
    async with running(arq_redis, hold, max_jobs=crowd) as worker:
        await eventually(lambda: _all_running(worker, crowd))
        seen = await monitor()
        release.set()
        await eventually(lambda: _completed(worker, crowd))

    assert not seen.named("GET", job_key_prefix), "no read of its own per run"
    reads = seen.named("MGET", job_key_prefix)
    assert 1 <= len(reads) < crowd, f"{crowd} records took {len(reads)} reads"
    keys = sorted(key for read in reads for key in read[1:])
    assert keys == sorted(job_key_prefix + f"many-{n}" for n in range(crowd)), "each record read once"
    for n in range(crowd):
        job = Job(f"many-{n}", arq_redis, _queue_name=QUEUE, _deserializer=broker.deserialize)
        assert await job.result(timeout=1) == n
