"""The one-call enqueue (`shared.infra.broker.enqueue`): arq's own record, score and expiry, idempotent on the job id,
readable by arq's own tooling, and a wake-up signal for the queue's workers when the job is due now."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus
from redis.asyncio import Redis

from shared.core import json
from shared.infra import broker, wakeup
from support.stack import Services, redis_config

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Record:
    """What the broker reads of a ledger record."""

    id: str
    type: str = "system.echo"
    queue: str = "default"
    owner: str = "alice"
    priority: str = "normal"
    payload: dict[str, Any] = field(default_factory=lambda: {"data": "x"})
    attempts: int = 0
    max_attempts: int = 3
    timeout_s: float = 30.0
    generation: int = 0
    batch_id: str | None = None
    scheduled_for: dt.datetime = field(default_factory=json.utcnow)
    expires_at: dt.datetime | None = None
    request_id: str | None = None

    @property
    def arq_id(self) -> str:
        return self.id if self.generation == 0 else f"{self.id}.{self.generation}"


@pytest.fixture
async def arq_redis(services: Services, jobs_redis: Redis) -> AsyncIterator[ArqRedis]:
    async with broker.open_jobs_redis(redis_config(services)) as redis:
        yield redis


async def test_a_second_enqueue_of_a_queued_or_finished_job_is_refused(arq_redis: ArqRedis) -> None:
    job = Record("job_a")
    assert await broker.enqueue(arq_redis, job) is True
    assert await broker.enqueue(arq_redis, replace(job, priority="high")) is False, "queued: refused"
    assert await arq_redis.zscore(broker.queue_key("default"), "job_a") is not None

    # Finished as arq finishes a job: its record gone, its result kept.
    await arq_redis.delete("arq:job:job_a")
    await arq_redis.zrem(broker.queue_key("default"), "job_a")
    await arq_redis.set("arq:result:job_a", broker.serialize({"r": 1}))
    assert await broker.enqueue(arq_redis, job) is False, "a result is held: refused"
    assert await arq_redis.exists("arq:job:job_a") == 0

    await broker.drop_result(arq_redis, job)
    assert await broker.enqueue(arq_redis, job) is True, "once the result is dropped, arq accepts the id again"


async def test_score_is_the_due_time_minus_the_band_and_the_record_lives_a_day_past_it(arq_redis: ArqRedis) -> None:
    later = json.utcnow() + dt.timedelta(hours=2)
    jobs = [
        Record("job_now_high", priority="high"),
        Record("job_now_low", priority="low"),
        Record("job_later", scheduled_for=later),
        Record("job_past", scheduled_for=json.utcnow() - dt.timedelta(days=3)),
    ]
    before = json.utcnow()
    assert await broker.enqueue_many(arq_redis, jobs) == [True, True, True, True]
    after = json.utcnow()

    def ms(at: dt.datetime) -> int:
        return round(at.timestamp() * 1000)

    async def score(job_id: str) -> float:
        value = await arq_redis.zscore(broker.queue_key("default"), job_id)
        assert value is not None
        return float(value)

    assert ms(before) - 2 * broker.BAND_MS <= await score("job_now_high") <= ms(after) - 2 * broker.BAND_MS
    assert ms(before) <= await score("job_now_low") <= ms(after)
    assert await score("job_later") == ms(later) - broker.BAND_MS
    assert ms(before) - broker.BAND_MS <= await score("job_past") <= ms(after) - broker.BAND_MS, "due now, not then"

    assert DAY_MS - 5000 < await arq_redis.pttl("arq:job:job_now_low") <= DAY_MS
    assert DAY_MS + 2 * 3600 * 1000 - 5000 < await arq_redis.pttl("arq:job:job_later") <= DAY_MS + 2 * 3600 * 1000


async def test_arqs_own_job_reads_the_record(arq_redis: ArqRedis) -> None:
    await broker.enqueue(arq_redis, Record("job_r", attempts=2, payload={"data": "hello"}))

    job = Job("job_r", arq_redis, _queue_name=broker.queue_key("default"), _deserializer=broker.deserialize)
    assert await job.status() == JobStatus.queued
    info = await job.info()
    assert info is not None
    assert (info.function, info.job_try, info.kwargs) == (broker.RUN_FUNCTION, 3, {})
    assert info.args[0]["id"] == "job_r"
    assert info.args[0]["payload"] == {"data": "hello"}
    assert next(iter(info.args[0])) == "owner", "the claim script reads the owner from the record's head"


async def test_one_call_enqueues_many_in_order_and_refuses_a_repeated_id(arq_redis: ArqRedis) -> None:
    jobs = [Record(f"job_{i}", queue="heavy" if i % 2 else "default") for i in range(450)]
    flags = await broker.enqueue_many(arq_redis, [*jobs, jobs[3], Record("job_new")])
    assert flags == [True] * 450 + [False, True]
    assert await arq_redis.zcard(broker.queue_key("default")) == 226
    assert await arq_redis.zcard(broker.queue_key("heavy")) == 225


async def test_a_due_enqueue_signals_its_queue_and_a_later_one_does_not(arq_redis: ArqRedis) -> None:
    pubsub = arq_redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(wakeup.channel(arq_redis, "default"), wakeup.channel(arq_redis, "heavy"), "end-of-test")
    try:
        later = json.utcnow() + dt.timedelta(minutes=5)
        await broker.enqueue(arq_redis, Record("job_later", scheduled_for=later))
        await broker.enqueue_many(arq_redis, [Record(f"job_{i}") for i in range(5)])
        await broker.enqueue(arq_redis, Record("job_0"))  # refused: no signal either
        await broker.enqueue(arq_redis, Record("job_h", queue="heavy"))
        await arq_redis.publish("end-of-test", "")  # messages arrive in order: read up to this marker

        channels: list[str] = []
        while True:
            message = await asyncio.wait_for(pubsub.get_message(timeout=5), 6)
            if message is None:  # a subscription's confirmation, dropped
                continue
            name = message["channel"].decode()
            if name == "end-of-test":
                break
            channels.append(name)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert channels == [wakeup.channel(arq_redis, "default"), wakeup.channel(arq_redis, "heavy")], (
        "one signal per call that added a due job of the queue"
    )
