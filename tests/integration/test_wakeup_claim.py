"""The claim a woken worker makes reads the due jobs itself, in the same call that takes them: high priority first,
then normal, then low, each in due-time order, then the parked ones; nothing that is not due, nothing held by a
lease, nothing while the gate is paused."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from arq.connections import ArqRedis
from arq.utils import timestamp_ms
from redis.asyncio import Redis

from shared.infra import broker, claim
from support.stack import Services, redis_config

QUEUE = broker.queue_key("default")


@pytest.fixture
async def arq_redis(services: Services, jobs_redis: Redis) -> AsyncIterator[ArqRedis]:
    async with broker.open_jobs_redis(redis_config(services)) as redis:
        assert await claim.set_gate(redis, "default", version=1, paused=False) is None
        yield redis


async def _take(redis: ArqRedis, *, limit: int, read: int = 100, running: tuple[str, ...] = ()) -> claim.Claimed:
    now = timestamp_ms()
    return await claim.claim(
        redis, QUEUE, "default", read=read, limit=limit, lease_ms=5000, now_ms=now, running=running
    )


async def test_one_call_takes_the_due_jobs_by_band_then_due_time(arq_redis: ArqRedis) -> None:
    now = timestamp_ms()
    await arq_redis.zadd(
        QUEUE,
        {
            "low-old": now - 5000 - broker.PRIORITY_BANDS["low"],
            "normal-new": now - 10 - broker.PRIORITY_BANDS["normal"],
            "normal-old": now - 2000 - broker.PRIORITY_BANDS["normal"],
            "high-later": now + 60_000 - broker.PRIORITY_BANDS["high"],  # not due
            "high-new": now - 1 - broker.PRIORITY_BANDS["high"],
            "low-later": now + 60_000,  # not due
        },
    )

    first = await _take(arq_redis, limit=2)
    rest = await _take(arq_redis, limit=10)

    assert [job_id for job_id, _ in first.jobs] == ["high-new", "normal-old"]
    assert [job_id for job_id, _ in rest.jobs] == ["normal-new", "low-old"], "taken ones hold their leases"
    assert await arq_redis.exists("arq:in-progress:high-later", "arq:in-progress:low-later") == 0


async def test_the_read_stops_at_its_limit_and_passes_over_the_workers_own_jobs(arq_redis: ArqRedis) -> None:
    now = timestamp_ms()
    await arq_redis.zadd(QUEUE, {f"job-{i}": now - 100 + i for i in range(5)})

    taken = await _take(arq_redis, limit=10, read=3, running=("job-0",))

    assert [job_id for job_id, _ in taken.jobs] == ["job-1", "job-2"], "three read, the first one its own"
    assert await arq_redis.exists("arq:in-progress:job-0") == 0, "passed over: its own worker holds it"


async def test_a_paused_gate_takes_nothing_however_the_claim_reads(arq_redis: ArqRedis) -> None:
    await arq_redis.zadd(QUEUE, {"job": timestamp_ms() - 10})
    assert await claim.set_gate(arq_redis, "default", version=2, paused=True) is None

    assert await _take(arq_redis, limit=10) == claim.Claimed(claim.Gate.PAUSED)
    assert await arq_redis.exists("arq:in-progress:job") == 0
