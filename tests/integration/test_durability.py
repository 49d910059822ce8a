"""Guarantee 1 and 5 with parts broken on purpose: Redis flushed or cut, PostgreSQL cut, workers stopped mid-job."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from support.helpers import eventually
from support.stack import Api, Conn, Services, StartWorker, gateway_settings, running_gateway
from support.tcp_proxy import TcpProxy


async def test_jobs_flushed_from_redis_are_reenqueued_from_the_ledger(
    api: Api, start_worker: StartWorker, jobs_redis: Redis
) -> None:
    jobs = [await api.submit("system.echo", {"data": i}) for i in range(3)]
    assert await jobs_redis.dbsize() > 0
    await jobs_redis.flushdb()  # Redis restarted empty

    scheduler = await start_worker("scheduler")
    await start_worker("default")

    for job in jobs:
        done = await api.wait_status(job["id"], "succeeded", within=15)
        assert done["attempts"] == 1
    assert b"conveyor_worker_reconciler_requeued_total 3.0" in scheduler.metrics.render()


async def test_redis_down_at_enqueue_still_accepts_and_runs_once_back(
    services: Services, pg: Conn, jobs_redis: Redis, proxy: TcpProxy, start_worker: StartWorker
) -> None:
    settings = gateway_settings(services, jobs_url=proxy.url(services.jobs_db), enqueue_timeout_s=0.5)
    async with running_gateway(settings) as api:
        proxy.cut()
        started = time.monotonic()
        job = await api.submit("system.echo", {"data": "durable"})
        assert time.monotonic() - started < 3, "an outage must not hold the request"
        assert await pg.fetchval("SELECT status FROM jobs WHERE id = $1", job["id"]) == "queued"
        assert await jobs_redis.dbsize() == 0

        proxy.restore()
        await start_worker("scheduler")
        await start_worker("default")

        done = await api.wait_status(job["id"], "succeeded", within=15)
        assert done["result"] == {"data": "durable", "attempt": 1}


async def test_ready_reports_a_redis_outage_as_503(services: Services, pg: Conn, proxy: TcpProxy) -> None:
    settings = gateway_settings(services, jobs_url=proxy.url(services.jobs_db))
    async with running_gateway(settings) as api:
        status, body, _ = await api.request("GET", "/ready")
        assert (status, body) == (200, {"redis": "ok", "postgres": "ok"})

        proxy.cut()
        status, body, _ = await api.request("GET", "/ready")
        assert status == 503
        assert body["redis"] != "ok"
        assert body["postgres"] == "ok"

        proxy.restore()
        status, _, _ = await api.request("GET", "/ready")
        assert status == 200


async def test_postgres_down_is_503_and_nothing_is_acknowledged(
    services: Services, pg: Conn, jobs_redis: Redis, pg_proxy: TcpProxy
) -> None:
    async with running_gateway(gateway_settings(services.through_postgres_port(pg_proxy.port))) as api:
        pg_proxy.cut()
        status, body, resp = await api.request("POST", "/api/v1/jobs", json={"type": "system.echo", "payload": {}})
        assert status == 503
        assert resp.content_type == "application/problem+json"
        assert body["code"] == "dependency_unavailable"
        assert await pg.fetchval("SELECT count(*) FROM jobs") == 0
        assert await jobs_redis.dbsize() == 0

        status, body, _ = await api.request("GET", "/ready")
        assert status == 503
        assert body["postgres"] != "ok"


async def test_graceful_stop_lets_a_running_job_finish(api: Api, start_worker: StartWorker) -> None:
    worker = await start_worker("default", shutdown_grace_s=10)
    job = await api.submit("system.echo", {"sleep_s": 1.0})
    await api.wait_status(job["id"], "running")

    worker.stop()

    done = await api.wait_status(job["id"], "succeeded", within=10)
    assert done["attempts"] == 1


async def test_job_outliving_the_grace_period_is_requeued_for_another_worker(
    api: Api, start_worker: StartWorker
) -> None:
    worker = await start_worker("default", shutdown_grace_s=0)
    job = await api.submit("system.echo", {"sleep_s": 1.5})
    await api.wait_status(job["id"], "running")

    worker.stop()
    requeued = await api.wait_status(job["id"], "queued", within=5)
    assert requeued["attempts"] == 0, "an attempt cut short by a shutdown is given back"

    await start_worker("default")
    done = await api.wait_status(job["id"], "succeeded", within=15)
    assert done["result"]["attempt"] == 1


async def test_reconciler_walks_every_candidate_not_just_the_first_page(
    api: Api, start_worker: StartWorker, jobs_redis: Redis
) -> None:
    waiting = [await api.submit("system.echo", {"data": i}) for i in range(5)]  # rightly in Redis, no worker yet
    lost = await api.submit("system.echo", {"data": "lost"})
    await jobs_redis.delete(f"arq:job:{lost['id']}")  # its enqueue never reached Redis

    scheduler = await start_worker("scheduler", reconcile_batch=2)

    async def requeued() -> bool | None:
        return True if b"conveyor_worker_reconciler_requeued_total 1.0" in scheduler.metrics.render() else None

    await eventually(requeued, within=10)
    await start_worker("default")
    for job in [*waiting, lost]:
        await api.wait_status(job["id"], "succeeded")


async def test_an_outcome_lost_by_the_ledger_is_run_again(
    api: Api, start_worker: StartWorker, pg: Conn, jobs_redis: Redis
) -> None:
    await start_worker("default")
    job = await api.submit("system.echo", {"data": "again"})
    await api.wait_status(job["id"], "succeeded")
    assert await jobs_redis.exists(f"arq:result:{job['id']}")
    # The ledger never heard of the outcome (its write failed), while arq keeps a result for the id.
    await pg.execute(
        "UPDATE jobs SET status = 'running', updated_at = now() - interval '1 hour' WHERE id = $1", job["id"]
    )

    await start_worker("scheduler")

    async def rerun() -> dict[str, object] | None:
        latest = await api.job(job["id"])
        return latest if latest["status"] == "succeeded" and latest["attempts"] == 2 else None

    await eventually(rerun, within=15)


async def test_ledger_outage_while_finishing_does_not_strand_the_job(
    services: Services, api: Api, pg_proxy: TcpProxy, start_worker: StartWorker
) -> None:
    await start_worker("default", via=services.through_postgres_port(pg_proxy.port))
    job = await api.submit("system.echo", {"sleep_s": 1}, max_attempts=1)
    await api.wait_status(job["id"], "running")
    pg_proxy.cut()  # the worker cannot record the outcome
    await asyncio.sleep(1.5)
    pg_proxy.restore()

    done = await api.wait_status(job["id"], "succeeded", within=20)
    assert done["attempts"] == 1, "the known outcome is written once the ledger is back; nothing runs again"
