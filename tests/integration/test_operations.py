"""Operations endpoints of both sides, metrics, and migrations under concurrent start-up."""

from __future__ import annotations

import asyncio
import secrets

import aiohttp
import asyncpg

from shared.infra import db
from support.helpers import eventually
from support.stack import Api, Conn, Services, StartWorker, postgres_config


async def test_health_and_ready(api: Api) -> None:
    status, body, _ = await api.request("GET", "/health", headers={"Authorization": ""})
    assert (status, body) == (200, {"status": "ok"})

    status, body, _ = await api.request("GET", "/ready")
    assert (status, body) == (200, {"redis": "ok", "postgres": "ok"})


async def test_gateway_metrics_count_requests_by_route_template(api: Api) -> None:
    job = await api.submit("system.echo", {})
    await api.request("GET", f"/api/v1/jobs/{job['id']}")

    status, text, resp = await api.request("GET", "/metrics")

    assert status == 200
    assert resp.content_type == "text/plain"
    assert 'conveyor_gateway_http_requests_total{method="GET",route="/api/v1/jobs/{job_id}",status="200"} 1.0' in text
    assert 'conveyor_gateway_jobs_enqueued_total{type="system.echo"} 1.0' in text
    assert job["id"] not in text, "raw paths must never become label values"


async def test_each_worker_serves_its_own_health_and_metrics(api: Api, start_worker: StartWorker) -> None:
    worker = await start_worker("default")
    job = await api.submit("system.echo", {"fail_times": 1})
    await api.wait_status(job["id"], "succeeded")

    async with aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{worker.metrics_port}"

        async def idle_health() -> dict[str, object] | None:
            async with session.get(f"{base}/health") as resp:
                health: dict[str, object] = await resp.json()
            return health if health["running"] == 0 else None  # arq finishes its bookkeeping after the ledger

        health = await eventually(idle_health, within=5)
        async with session.get(f"{base}/metrics") as resp:
            metrics = await resp.text()

    assert health == {"status": "ok", "queue": "default", "taking_jobs": True, "paused": False, "running": 0}
    assert 'conveyor_worker_jobs_total{outcome="succeeded",type="system.echo"} 1.0' in metrics
    assert 'conveyor_worker_jobs_total{outcome="retried",type="system.echo"} 1.0' in metrics
    assert 'conveyor_worker_up{queue="default"} 1.0' in metrics
    assert "conveyor_worker_job_queue_wait_seconds_bucket" in metrics


async def test_migrations_apply_once_when_many_processes_start_together(services: Services) -> None:
    admin = await asyncpg.connect(services.database_url)
    name = f"conveyor_migrate_race_{secrets.token_hex(4)}"
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{services.database_url.rpartition('/')[0]}/{name}"
    conns = [await asyncpg.connect(url) for _ in range(5)]
    try:
        applied = await asyncio.gather(*(db.apply_migrations(c) for c in conns))
        counts = sorted(len(a) for a in applied)
        assert counts[:4] == [0, 0, 0, 0], "exactly one process applies the migrations"
        assert counts[4] >= 1
        assert sum(len(a) for a in applied) == await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert await conns[0].fetchval("SELECT to_regclass('jobs') IS NOT NULL")
    finally:
        for c in conns:
            await c.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_a_connection_returned_mid_transaction_is_rolled_back(services: Services, pg: Conn) -> None:
    one_connection = postgres_config(services).model_copy(update={"pool_min": 1, "pool_max": 1})
    async with db.open_pool(one_connection, migrate=False) as pool:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO jobs (id, type, queue, owner, status, payload, max_attempts, timeout_s)"
                               " VALUES ('j', 't', 'q', 'o', 'queued', '{}', 1, 1)")  # fmt: skip
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()

    assert await pg.fetchval("SELECT count(*) FROM jobs") == 0


async def test_retention_purges_finished_jobs_past_retention_days(
    api: Api, start_worker: StartWorker, pg: Conn
) -> None:
    old = await api.submit("system.echo", {})
    recent = await api.submit("system.echo", {})
    waiting = await api.submit("system.echo", {}, delay_s=3600)
    await pg.execute(
        "UPDATE jobs SET status = 'succeeded', finished_at = now() - interval '8 days' WHERE id = $1", old["id"]
    )
    await pg.execute(
        "UPDATE jobs SET status = 'failed', finished_at = now() - interval '6 days' WHERE id = $1", recent["id"]
    )
    await pg.execute("UPDATE jobs SET created_at = now() - interval '30 days' WHERE id = $1", waiting["id"])

    await start_worker("scheduler")

    async def purged() -> bool | None:
        return True if await pg.fetchval("SELECT count(*) FROM jobs WHERE id = $1", old["id"]) == 0 else None

    await eventually(purged, within=5)
    assert sorted(await pg.fetchval("SELECT array_agg(id) FROM jobs")) == sorted([recent["id"], waiting["id"]])
