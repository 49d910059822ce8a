"""Wake-up instead of polling: an enqueue signals the queue's idle workers, a freed slot takes the next job at
once, a resume starts the paused jobs, and the poll stays the fallback for a lost signal. The workers here poll
rarely (POLL_S), so only a wake-up can start a job within the tests' waits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from arq.utils import timestamp_ms
from redis.asyncio import Redis

from shared.core.json import utcnow
from shared.infra import broker, claim, db, wakeup
from shared.ledger import records
from support.helpers import eventually
from support.stack import Api, Conn, Services, StartWorker, redis_config, worker_settings

ADMIN = {"as_": "root", "role": "admin"}
POLL_S = 60.0


def _channel(services: Services, queue: str = "default") -> str:
    return f"{wakeup.CHANNEL_PREFIX}{services.jobs_db}:{queue}"


def _subscribed(jobs_redis: Redis, name: str) -> Callable[[], Awaitable[bool | None]]:
    """Until a worker process listens on `name`."""

    async def check() -> bool | None:
        found = await jobs_redis.pubsub_numsub(name)
        return True if found and found[0][1] >= 1 else None

    return check


async def test_an_idle_worker_starts_a_job_on_its_signal_not_its_poll(
    services: Services, api: Api, jobs_redis: Redis, start_worker: StartWorker
) -> None:
    await start_worker("default", poll_delay_s=POLL_S)
    await eventually(_subscribed(jobs_redis, _channel(services)))

    job = await api.submit("system.echo", {"data": "now"})

    done = await api.wait_status(job["id"], "succeeded", within=10)
    assert done["result"]["data"] == "now"


async def test_a_freed_slot_takes_the_next_job_at_once(
    services: Services, api: Api, jobs_redis: Redis, start_worker: StartWorker
) -> None:
    await start_worker("default", poll_delay_s=POLL_S, max_jobs=1)
    await eventually(_subscribed(jobs_redis, _channel(services)))

    jobs = [await api.submit("system.echo", {"sleep_s": 0.1, "data": i}) for i in range(4)]

    for job in jobs:
        await api.wait_status(job["id"], "succeeded", within=10)


async def test_a_lost_signal_is_made_up_by_the_poll(
    services: Services, api: Api, jobs_redis: Redis, start_worker: StartWorker
) -> None:
    await start_worker("default", poll_delay_s=0.5)
    await eventually(_subscribed(jobs_redis, _channel(services)))
    # A job in the ledger put on its queue by arq's own client, which signals nobody: for the worker, a signal
    # lost on its way. Only the poll can start it.
    async with db.open_pool(worker_settings(services).postgres) as pool:
        record, _ = await records.insert_job(
            pool,
            records.NewJob(
                id=records.new_job_id(), type="system.echo", queue="default", owner="alice", priority="normal",
                payload={"data": "late"}, max_attempts=3, timeout_s=30, scheduled_for=utcnow(), expires_at=None,
                idempotency_key=None, request_hash=None, request_id=None,
            ),
        )  # fmt: skip
    async with broker.open_jobs_redis(redis_config(services)) as arq_redis:
        queued = await arq_redis.enqueue_job(
            broker.RUN_FUNCTION, broker.envelope(record), _job_id=record.arq_id, _queue_name=broker.queue_key("default")
        )
    assert queued is not None

    assert (await api.wait_status(record.id, "succeeded", within=10))["result"]["data"] == "late"


@pytest.mark.timeout(60)
async def test_a_paused_queue_starts_nothing_under_a_flood_of_signals_and_everything_after_resume(
    services: Services, api: Api, pg: Conn, jobs_redis: Redis, start_worker: StartWorker
) -> None:
    await start_worker("default", poll_delay_s=POLL_S)
    await start_worker("default", poll_delay_s=POLL_S)
    await eventually(_subscribed(jobs_redis, _channel(services)))
    status, _, _ = await api.request("POST", "/api/v1/queues/default/pause", **ADMIN)
    assert status == 200

    jobs = [await api.submit("system.echo", {"data": i}) for i in range(10)]
    for _ in range(200):
        await jobs_redis.publish(_channel(services), "")
    await asyncio.sleep(1.0)  # an absence: time for every signal to reach both workers and for their claims

    started = await pg.fetchval("SELECT count(*) FROM jobs WHERE started_at IS NOT NULL")
    assert started == 0, "the gate is checked in the claim, however often the workers are woken"

    status, _, _ = await api.request("POST", "/api/v1/queues/default/resume", **ADMIN)
    assert status == 200
    for job in jobs:  # the gate opening is a signal of its own: nothing waits for the poll
        await api.wait_status(job["id"], "succeeded", within=10)


async def test_the_subscription_comes_back_after_its_connection_is_killed(
    services: Services, api: Api, jobs_redis: Redis, start_worker: StartWorker
) -> None:
    await start_worker("default", poll_delay_s=POLL_S)
    name = _channel(services)
    await eventually(_subscribed(jobs_redis, name))
    first = await api.submit("system.echo", {"data": 1})
    await api.wait_status(first["id"], "succeeded", within=10)

    # CLIENT KILL TYPE pubsub, but only this session's subscriber (other sessions share the server).
    clients = await jobs_redis.client_list(_type="pubsub")
    ours = [c["id"] for c in clients if int(c.get("db", -1)) == services.jobs_db]
    assert ours, clients
    for client_id in ours:
        await jobs_redis.client_kill_filter(_id=client_id)
    await eventually(_subscribed(jobs_redis, name))

    second = await api.submit("system.echo", {"data": 2})
    assert (await api.wait_status(second["id"], "succeeded", within=10))["result"]["data"] == 2


@pytest.mark.slow
async def test_jobs_claimed_by_a_worker_that_died_before_running_them_run_once_each_after_the_lease(
    services: Services, api: Api, pg: Conn, jobs_redis: Redis, start_worker: StartWorker
) -> None:
    lease_ms = 2000
    jobs = [await api.submit("system.echo", {"data": i}) for i in range(6)]
    async with broker.open_jobs_redis(redis_config(services)) as redis:
        assert await claim.set_gate(redis, "default", version=0, paused=False) is None
        # What a worker's poll does; the worker is then SIGKILLed before it starts any of them.
        taken = await claim.claim(
            redis, broker.queue_key("default"), "default", read=100, limit=100, lease_ms=lease_ms,
            now_ms=timestamp_ms(),
        )  # fmt: skip
    assert len(taken.jobs) == 6

    await start_worker("default", lease_s=lease_ms / 1000, poll_delay_s=0.05)
    await start_worker("default", lease_s=lease_ms / 1000, poll_delay_s=0.05)
    for job in jobs:
        done = await api.wait_status(job["id"], "succeeded", within=20)
        assert done["attempts"] == 1, "started once, by one of the live workers"
        assert done["result"]["attempt"] == 1
