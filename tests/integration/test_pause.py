"""Pause is exact: once `POST /queues/{name}/pause` has answered, no job of the queue starts on any worker
process, whatever a worker had read before; resume starts them again, high priority first."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from shared.infra import claim
from shared.infra.broker import open_jobs_redis
from shared.infra.claim import Gate
from support.helpers import eventually
from support.stack import TEST_ENCRYPTION_KEY, Api, Conn, Services, StartWorker, redis_config

ADMIN = {"as_": "root", "role": "admin"}
SLOTS_PER_WORKER = 2
# Long enough that a worker stalled between its claim and recording the start (a loaded machine) cannot let a
# whole round of later jobs record theirs first.
JOB_S = 0.25

StartWorkers = Callable[[int], Awaitable[None]]


@pytest.fixture
async def worker_processes(services: Services, api: Api, tmp_path: Path) -> AsyncIterator[StartWorkers]:
    """Start real `python -m workers default` processes (as `make run` does) and wait until each is live."""
    procs: list[asyncio.subprocess.Process] = []
    env = {
        **os.environ,
        "ENCRYPTION_KEYS": TEST_ENCRYPTION_KEY,
        "REDIS_CACHE_URL": services.cache_url, "REDIS_JOBS_URL": services.jobs_url,
        "DATABASE_URL": services.database_url, "STORAGE_DIR": services.storage_dir,
        "WORKER_METRICS_PORT": "0", "WORKER_MAX_JOBS": str(SLOTS_PER_WORKER), "WORKER_POLL_DELAY_S": "0.01",
        "SHUTDOWN_GRACE_S": "2", "LOG_LEVEL": "WARNING",
    }  # fmt: skip

    async def start(count: int) -> None:
        with (tmp_path / "workers.log").open("ab") as out:
            for _ in range(count):
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "workers", "default", env=env, stdout=out, stderr=out
                    )
                )

        async def live() -> bool | None:
            _, queue, _ = await api.request("GET", "/api/v1/queues/default", **ADMIN)
            return True if queue["workers"] == len(procs) else None

        await eventually(live, within=30, interval=0.1)

    yield start
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), timeout=15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _started(pg: Conn) -> int:
    return int(await pg.fetchval("SELECT count(*) FROM jobs WHERE started_at IS NOT NULL OR attempts > 0"))


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_nothing_starts_after_pause_answers_and_resume_runs_high_priority_first(
    api: Api, pg: Conn, worker_processes: StartWorkers
) -> None:
    await worker_processes(2)
    status, queue, _ = await api.request("POST", "/api/v1/queues/default/pause", **ADMIN)
    assert (status, queue["paused"]) == (200, True)

    # At once, right behind the pause: every worker is polling, none has re-read the ledger yet.
    priorities = ["high" if i % 5 == 0 else "normal" for i in range(50)]
    jobs = await asyncio.gather(*(api.submit("system.echo", {"sleep_s": JOB_S}, priority=p) for p in priorities))
    expiring = await api.submit("system.echo", {}, expires_in_s=1)
    cancelled = await api.submit("system.echo", {})
    status, _, _ = await api.request("POST", f"/api/v1/jobs/{cancelled['id']}/cancel")
    assert status == 200

    await asyncio.sleep(2.0)  # the promise is about time passing: nothing may start in it
    assert await _started(pg) == 0, "a job of a paused queue started"

    status, queue, _ = await api.request("POST", "/api/v1/queues/default/resume", **ADMIN)
    assert (status, queue["paused"]) == (200, False)
    for job in jobs:
        await api.wait_status(job["id"], "succeeded", within=30)
    expired = await api.wait_status(expiring["id"], "failed")
    assert (expired["error"]["type"], expired["started_at"]) == ("JobExpired", None)
    assert (await api.job(cancelled["id"]))["started_at"] is None

    order = [
        r["priority"]
        for r in await pg.fetch(
            "SELECT priority FROM jobs WHERE id = ANY($1::text[]) ORDER BY started_at", [j["id"] for j in jobs]
        )
    ]
    highs = order.count("high")
    # Two workers take jobs side by side: a normal job may start in the same round as the last high ones.
    assert "high" not in order[highs + 2 * SLOTS_PER_WORKER :], order


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_queue_whose_gate_redis_lost_starts_nothing_until_the_ledger_flag_is_back(
    api: Api, pg: Conn, jobs_redis: Redis, worker_processes: StartWorkers
) -> None:
    await worker_processes(1)
    await api.request("POST", "/api/v1/queues/default/pause", **ADMIN)
    await jobs_redis.delete(claim.gate_key("default"))  # as after a Redis restart with nothing on disk
    job = await api.submit("system.echo", {})

    async def restored() -> bytes | None:
        value: bytes | None = await jobs_redis.get(claim.gate_key("default"))
        return value

    assert (await eventually(restored, within=5)).endswith(b":paused"), "workers copy the ledger's flag back"
    assert (await api.job(job["id"]))["status"] == "queued"

    await api.request("POST", "/api/v1/queues/default/resume", **ADMIN)
    await api.wait_status(job["id"], "succeeded")


async def test_an_older_copy_of_the_flag_never_undoes_a_newer_pause(services: Services, jobs_redis: Redis) -> None:
    async with open_jobs_redis(redis_config(services)) as redis:
        assert await claim.set_gate(redis, "default", version=3, paused=True) is None
        assert await claim.set_gate(redis, "default", version=2, paused=False) == 3, "refused: the gate is newer"
        await jobs_redis.zadd("conveyor:queue:default", {"some-job": 0})
        found = await claim.claim(
            redis, "conveyor:queue:default", "default", ["some-job"], limit=1, lease_ms=1000, now_ms=1
        )
        assert found == claim.Claimed(Gate.PAUSED)
        assert await claim.set_gate(redis, "default", version=4, paused=False) is None
        found = await claim.claim(
            redis, "conveyor:queue:default", "default", ["some-job"], limit=1, lease_ms=1000, now_ms=1
        )
        assert found == claim.Claimed(Gate.OPEN, (("some-job", 0),))


async def test_the_ledger_wins_over_a_gate_left_by_another_ledger(
    api: Api, pg: Conn, jobs_redis: Redis, start_worker: StartWorker
) -> None:
    # A database restored or recreated under a Redis that kept its data: the gate's version is ahead.
    await jobs_redis.set(claim.gate_key("default"), b"7:open")
    status, queue, _ = await api.request("POST", "/api/v1/queues/default/pause", **ADMIN)
    assert (status, queue["paused"]) == (200, True)
    assert await jobs_redis.get(claim.gate_key("default")) == b"8:paused"

    await start_worker("default")
    job = await api.submit("system.echo", {})
    await jobs_redis.set(claim.gate_key("default"), b"20:paused")  # and the other way round
    await api.request("POST", "/api/v1/queues/default/resume", **ADMIN)
    await api.wait_status(job["id"], "succeeded")

    await jobs_redis.set(claim.gate_key("default"), b"50:paused")  # a stale pause the ledger never had
    job = await api.submit("system.echo", {})
    await api.wait_status(job["id"], "succeeded")  # the worker publishes the ledger's flag over it
    assert await pg.fetchval("SELECT version FROM queues WHERE name = 'default'") > 50
