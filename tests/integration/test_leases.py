"""Guarantee 2: a worker killed with SIGKILL mid-job loses its lease, and another worker runs the job."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from support.stack import TEST_ENCRYPTION_KEY, Api, Conn, Services, StartWorker
from support.tcp_proxy import TcpProxy

LEASE_S = 2.0


@pytest.mark.slow
async def test_sigkilled_workers_job_is_rerun_by_another_within_the_lease(
    services: Services, api: Api, pg: Conn, jobs_redis: Redis, start_worker: StartWorker, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "ENCRYPTION_KEYS": TEST_ENCRYPTION_KEY,
        "REDIS_CACHE_URL": services.cache_url, "REDIS_JOBS_URL": services.jobs_url,
        "DATABASE_URL": services.database_url, "JOB_LEASE_S": str(LEASE_S), "WORKER_METRICS_PORT": "0",
        "WORKER_POLL_DELAY_S": "0.01", "LOG_LEVEL": "WARNING",
    }  # fmt: skip
    with (tmp_path / "worker.log").open("wb") as out:
        doomed = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "workers", "default", env=env, stdout=out, stderr=out
        )
    try:
        job = await api.submit("system.echo", {"sleep_s": 3, "data": "survivor"}, timeout_s=60)
        await api.wait_status(job["id"], "running", within=20)
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
        killed_at = dt.datetime.now(dt.UTC)

        await start_worker("default", lease_s=LEASE_S)
        done = await api.wait_status(job["id"], "succeeded", within=20)
    finally:
        if doomed.returncode is None:
            doomed.kill()
            await doomed.wait()

    assert done["attempts"] == 2
    assert done["result"] == {"data": "survivor", "attempt": 2}
    restarted = dt.datetime.fromisoformat(done["started_at"])
    assert (restarted - killed_at).total_seconds() < LEASE_S + 2, "taken over within the lease, not the timeout"


async def test_a_live_worker_keeps_its_lease_through_a_long_job(api: Api, start_worker: StartWorker) -> None:
    await start_worker("default", lease_s=1.0)
    await start_worker("default", lease_s=1.0)
    job = await api.submit("system.echo", {"sleep_s": 3.5})

    done = await api.wait_status(job["id"], "succeeded", within=15)

    assert done["attempts"] == 1, "renewed leases: no second worker took the job over"


async def test_a_redis_blip_neither_stops_the_worker_nor_doubles_its_job(
    services: Services, api: Api, proxy: TcpProxy, start_worker: StartWorker
) -> None:
    worker = await start_worker("default", lease_s=1.0, jobs_url=proxy.url(services.jobs_db))
    job = await api.submit("system.echo", {"sleep_s": 3})
    await api.wait_status(job["id"], "running")

    proxy.cut()
    await asyncio.sleep(0.3)
    proxy.restore()

    done = await api.wait_status(job["id"], "succeeded", within=15)
    assert done["attempts"] == 1
    follow_up = await api.submit("system.echo", {"data": "still here"})
    assert (await api.wait_status(follow_up["id"], "succeeded"))["result"]["data"] == "still here"
    assert worker.metrics_port is not None
