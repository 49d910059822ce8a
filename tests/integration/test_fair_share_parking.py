"""Parking under fair shares, through the worker's own read and claim on real Redis: an owner with share left
is served however long another owner's parked high-priority backlog is, and parking re-scores each job once.

The shares are written to Redis as a worker's control step publishes them (`shared.infra.fair_share`), so that the
test can hold them still while the worker polls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.worker import func
from redis.asyncio import Redis

from shared.core import json
from shared.infra import broker, fair_share
from shared.infra.claim import set_gate
from shared.ledger.records import JobRecord, new_job_id
from support.stack import Services, redis_config
from workers.priority_worker import PriorityWorker

QUEUE = "default"
READ = 5  # a short read window, so that a backlog of a few dozen jobs is longer than any read


def _record(owner: str, priority: str) -> JobRecord:
    now = json.utcnow()
    return JobRecord(
        id=new_job_id(), type="system.echo", queue=QUEUE, owner=owner, status="queued", priority=priority,
        payload={}, attempts=0, max_attempts=3, timeout_s=60, result=None, error=None, error_history=[],
        batch_id=None, idempotency_key=None, request_hash=None, request_id=None, created_at=now,
        scheduled_for=now, expires_at=None, started_at=None, finished_at=None, updated_at=now, run_seq=0,
        generation=0,
    )  # fmt: skip


@pytest.fixture
async def pool(services: Services, jobs_redis: Redis) -> AsyncIterator[ArqRedis]:
    async with broker.open_jobs_redis(redis_config(services), queue=QUEUE) as client:
        await set_gate(client, QUEUE, version=1, paused=False)
        yield client


async def _worker(pool: ArqRedis) -> PriorityWorker:
    async def run(ctx: dict[str, Any], envelope: dict[str, Any]) -> None:
        await asyncio.sleep(60)  # holds its slot for the whole test

    return PriorityWorker(
        gate_queue=QUEUE, functions=[func(run, name=broker.RUN_FUNCTION)], queue_name=broker.queue_key(QUEUE),
        redis_pool=pool, handle_signals=False, max_jobs=4, queue_read_limit=READ,
        job_serializer=broker.serialize, job_deserializer=broker.deserialize,
    )  # fmt: skip


async def _shares(pool: ArqRedis, **left: int) -> None:
    key = fair_share.share_key(QUEUE)
    async with pool.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.hset(key, mapping=dict(left))
        pipe.pexpire(key, 60_000)
        await pipe.execute()


def _taken(worker: PriorityWorker, jobs: list[JobRecord]) -> list[str]:
    """The owners of the jobs the worker has taken, in the order taken."""
    owners = {job.id: job.owner for job in jobs}
    return [owners[job_id] for job_id in worker.running]


async def _stop(worker: PriorityWorker) -> None:
    for task in worker.running.values():
        task.cancel()
    await asyncio.gather(*worker.running.values(), return_exceptions=True)


async def _park_all(worker: PriorityWorker, pool: ArqRedis, jobs: list[JobRecord]) -> dict[str, float]:
    """Poll until every job is parked; their parked scores."""
    for _ in range(10):
        scores = {job.id: await pool.zscore(broker.queue_key(QUEUE), job.id) for job in jobs}
        if all(score is not None and score < broker.PARK_TOP_MS for score in scores.values()):
            return {job_id: float(score) for job_id, score in scores.items() if score is not None}
        await worker.poll_once()
    raise AssertionError("the jobs were not parked")


async def test_an_owner_with_share_left_is_served_behind_a_parked_high_priority_flood(pool: ArqRedis) -> None:
    jobs = [_record("alice", "high") for _ in range(30)] + [_record("bob", "normal")]
    for job in jobs:
        await broker.enqueue(pool, job)
    worker = await _worker(pool)
    try:
        await _shares(pool, alice=0, bob=0)  # both have used their share: everything due is parked
        await _park_all(worker, pool, jobs)
        assert _taken(worker, jobs) == []

        await _shares(pool, alice=0, bob=3)  # bob's job ended: bob may start more, alice may not
        for _ in range(20):
            await worker.poll_once()
            if worker.running:
                break
        assert _taken(worker, jobs) == ["bob"], "bob's parked job waited behind alice's parked flood"
    finally:
        await _stop(worker)


async def test_a_parked_job_is_re_scored_once_however_often_the_worker_polls(pool: ArqRedis) -> None:
    flood = [_record("alice", "high") for _ in range(12)]
    for job in flood:
        await broker.enqueue(pool, job)
    worker = await _worker(pool)
    await _shares(pool, alice=0, bob=4)  # alice has used her share; bob waits, and may start jobs
    try:
        parked = await _park_all(worker, pool, flood)
        bobs = [_record("bob", "normal") for _ in range(3)]
        for job in bobs:
            await broker.enqueue(pool, job)
            await worker.poll_once()
        again = {job.id: await pool.zscore(broker.queue_key(QUEUE), job.id) for job in flood}
        assert _taken(worker, flood + bobs) == ["bob"] * 3
        assert again == parked, "parked jobs were re-scored on every poll"
    finally:
        await _stop(worker)


async def test_parked_jobs_come_first_once_the_shares_lapse_even_behind_a_full_read_window(pool: ArqRedis) -> None:
    parked = [_record("alice", "high") for _ in range(3)]
    for job in parked:
        await broker.enqueue(pool, job)
    worker = await _worker(pool)
    try:
        await _shares(pool, alice=0, bob=1)  # bob waits: alice's high jobs are parked
        await _park_all(worker, pool, parked)
        await pool.delete(fair_share.share_key(QUEUE))  # nobody waits any more: the shares are gone
        later = [_record("alice", "low") for _ in range(READ * 2)]  # more due banded jobs than one read holds
        for job in later:
            await broker.enqueue(pool, job)

        await worker.poll_once()

        taken = list(worker.running)
        # all three first (jobs due in the same millisecond may come in any order among themselves)
        assert set(taken[: len(parked)]) == {job.id for job in parked}, "parked high jobs waited behind low ones"
        for job in parked:  # back where they stood before parking: found there again if their worker dies
            score = await pool.zscore(broker.queue_key(QUEUE), job.id)
            assert score is not None
            assert score > broker.PARK_TOP_MS
    finally:
        await _stop(worker)
