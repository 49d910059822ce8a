"""Guarantee 1 and 5 with parts broken on purpose: Redis flushed or cut, PostgreSQL cut, workers stopped mid-job."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

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
    settings = gateway_settings(services, jobs_url=proxy.url(15), enqueue_timeout_s=0.5)
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
    settings = gateway_settings(services, jobs_url=proxy.url(15))
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
    services: Services, pg: Conn, jobs_redis: Redis
) -> None:
    host_port = services.database_url.split("@", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    pg_proxy = TcpProxy(host or "127.0.0.1", int(port or 5432))
    await pg_proxy.start()
    db_url = services.database_url.replace(host_port, f"127.0.0.1:{pg_proxy.port}")
    settings = gateway_settings(Services(redis_base=services.redis_base, database_url=db_url))
    try:
        async with running_gateway(settings) as api:
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
    finally:
        await pg_proxy.close()


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
    assert requeued["attempts"] == 1
    await asyncio.sleep(0.3)
    assert (await api.job(job["id"]))["status"] == "queued", "a stopped worker must not take jobs"

    await start_worker("default")
    done = await api.wait_status(job["id"], "succeeded", within=15)
    assert done["result"]["attempt"] == 2
