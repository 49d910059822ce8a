"""A worker killed between a job's outcome and the commit of its group: the job runs again, and ends once.

The worker (a real process) loses the ledger once the job is running, so its handler finishes and the group
carrying the success cannot commit; it is SIGKILLed while it retries that write. Nothing was acknowledged to
arq, so another worker takes the job over after the lease and records its own run. The dead run's write, had
it reached PostgreSQL late, is fenced on its run number and changes nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from shared.infra import db
from shared.ledger import records
from support.helpers import eventually
from support.stack import TEST_ENCRYPTION_KEY, Api, Conn, Services, StartWorker, worker_settings
from support.tcp_proxy import TcpProxy

LEASE_S = 2.0


@pytest.mark.slow
async def test_a_worker_killed_before_its_group_commits_has_the_job_rerun_and_recorded_once(
    services: Services,
    api: Api,
    pg: Conn,
    jobs_redis: Redis,
    pg_proxy: TcpProxy,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "ENCRYPTION_KEYS": TEST_ENCRYPTION_KEY,
        "REDIS_CACHE_URL": services.cache_url, "REDIS_JOBS_URL": services.jobs_url,
        "DATABASE_URL": services.through_postgres_port(pg_proxy.port).database_url, "JOB_LEASE_S": str(LEASE_S),
        "WORKER_METRICS_PORT": "0", "WORKER_POLL_DELAY_S": "0.01", "LOG_LEVEL": "WARNING",
    }  # fmt: skip
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        doomed = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "workers", "default", env=env, stdout=out, stderr=out
        )
    try:
        job = await api.submit("system.echo", {"sleep_s": 0.5, "data": "once"}, timeout_s=60)
        await api.wait_status(job["id"], "running", within=20)
        first_run = await records.get_job(pg, job["id"])  # what the doomed worker holds: run 1
        assert first_run is not None
        pg_proxy.cut()  # the start is recorded; the success cannot be

        async def outcome_unwritten() -> bool | None:
            return True if b"job.outcome_write_retry" in log.read_bytes() else None

        await eventually(outcome_unwritten)  # the handler has finished; its group did not commit
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
        pg_proxy.restore()
        assert (await api.job(job["id"]))["status"] == "running", "nothing of the dead run's outcome was recorded"

        await start_worker("default", lease_s=LEASE_S)
        done = await api.wait_status(job["id"], "succeeded", within=20)
    finally:
        if doomed.returncode is None:
            doomed.kill()
            await doomed.wait()

    assert done["attempts"] == 2
    assert done["result"] == {"data": "once", "attempt": 2}, "the second run's outcome"
    async with db.open_pool(worker_settings(services).postgres) as pool:
        late = await records.mark_succeeded_many(pool, [(first_run, {"data": "once", "attempt": 1})])
    assert late == [False], "the dead run's write is fenced on its run number"
    after = await api.job(job["id"])
    assert (after["status"], after["result"], after["finished_at"]) == (
        "succeeded",
        done["result"],
        done["finished_at"],
    )
