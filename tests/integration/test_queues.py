"""Queue administration: admin only; pause holds new starts; stats, clean, retry-failed and health alerts."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from support.helpers import eventually
from support.stack import Api, Conn, Services, StartWorker, gateway_settings, running_gateway

ADMIN = {"as_": "root", "role": "admin"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/queues"),
        ("GET", "/api/v1/queues/health"),
        ("GET", "/api/v1/queues/default"),
        ("POST", "/api/v1/queues/default/pause"),
        ("POST", "/api/v1/queues/default/resume"),
        ("POST", "/api/v1/queues/default/clean"),
        ("POST", "/api/v1/queues/default/retry-failed"),
    ],
)
async def test_queue_routes_are_for_admins_only(api: Api, method: str, path: str) -> None:
    status, body, _ = await api.request(method, path, as_="alice")

    assert status == 403
    assert body["code"] == "permission_denied"


async def test_unknown_queue_is_404(api: Api) -> None:
    status, _, _ = await api.request("GET", "/api/v1/queues/nope", **ADMIN)

    assert status == 404


async def test_stats_count_jobs_by_status_and_live_workers(api: Api, start_worker: StartWorker, pg: Conn) -> None:
    first = await api.submit("system.echo", {})
    await api.submit("system.echo", {})
    await pg.execute("UPDATE jobs SET status = 'failed' WHERE id = $1", first["id"])
    await pg.execute("UPDATE jobs SET scheduled_for = now() - interval '30 seconds' WHERE status = 'queued'")

    _, before, _ = await api.request("GET", "/api/v1/queues/default", **ADMIN)
    assert before["queued"] == 1
    assert before["failed"] == 1
    assert before["succeeded"] == 0
    assert before["workers"] == 0
    assert before["oldest_queued_age_s"] >= 30
    assert before["paused"] is False

    await start_worker("default")

    async def drained() -> dict[str, object] | None:
        _, now, _ = await api.request("GET", "/api/v1/queues/default", **ADMIN)
        return now if now["succeeded"] == 1 else None

    after = await eventually(drained)
    assert after["workers"] == 1
    assert after["queued"] == 0
    assert after["oldest_queued_age_s"] is None
    _, listing, _ = await api.request("GET", "/api/v1/queues", **ADMIN)
    assert [q["name"] for q in listing["items"]] == ["default", "heavy", "scheduler"]


async def test_paused_queue_starts_nothing_but_still_accepts(api: Api, start_worker: StartWorker) -> None:
    worker = await start_worker("default")
    status, paused, _ = await api.request("POST", "/api/v1/queues/default/pause", **ADMIN)
    assert (status, paused["paused"]) == (200, True)

    async def followed() -> bool | None:  # workers follow the flag within their control interval
        return True if worker.paused else None

    await eventually(followed, within=5)

    job = await api.submit("system.echo", {})
    # Nothing can finish on a paused queue, so no sentinel can: the promise is that time passes (many polls
    # of the worker) with no start.
    await asyncio.sleep(1.0)
    assert (await api.job(job["id"]))["status"] == "queued"

    await api.request("POST", "/api/v1/queues/default/resume", **ADMIN)
    await api.wait_status(job["id"], "succeeded", within=5)


async def test_a_pause_set_before_a_worker_starts_holds(api: Api, start_worker: StartWorker) -> None:
    await api.request("POST", "/api/v1/queues/default/pause", **ADMIN)
    job = await api.submit("system.echo", {})

    await start_worker("default")
    await asyncio.sleep(0.8)  # as above: time passing with no start is the promise (no sentinel can run)

    assert (await api.job(job["id"]))["status"] == "queued"
    await api.request("POST", "/api/v1/queues/default/resume", **ADMIN)


async def test_clean_removes_old_finished_jobs_from_ledger_and_redis(
    api: Api, start_worker: StartWorker, pg: Conn, jobs_redis: Redis
) -> None:
    await start_worker("default")
    old, recent = await api.submit("system.echo", {}), await api.submit("system.echo", {})
    for job in (old, recent):
        await api.wait_status(job["id"], "succeeded")
    await pg.execute("UPDATE jobs SET finished_at = now() - interval '2 hours' WHERE id = $1", old["id"])

    status, body, _ = await api.request(
        "POST", "/api/v1/queues/default/clean", json={"older_than_s": 3600, "statuses": ["succeeded"]}, **ADMIN
    )

    assert (status, body) == (200, {"removed": 1})
    assert await pg.fetchval("SELECT array_agg(id) FROM jobs") == [recent["id"]]
    assert not await jobs_redis.exists(f"arq:result:{old['id']}")
    assert await jobs_redis.exists(f"arq:result:{recent['id']}")


async def test_clean_refuses_unfinished_statuses(api: Api) -> None:
    status, body, _ = await api.request("POST", "/api/v1/queues/default/clean", json={"statuses": ["queued"]}, **ADMIN)

    assert status == 422
    assert body["errors"][0]["loc"][0] == "statuses"


@pytest.mark.parametrize("older_than_s", [False, "3600", None])
async def test_clean_takes_no_value_its_schema_refuses(api: Api, pg: Conn, older_than_s: object) -> None:
    await api.submit("system.echo", {})
    await pg.execute("UPDATE jobs SET status = 'succeeded', finished_at = now() - interval '2 hours'")

    status, body, _ = await api.request(
        "POST", "/api/v1/queues/default/clean", json={"older_than_s": older_than_s}, **ADMIN
    )

    assert status == 422, body  # `false` is no number of seconds (it would have meant 0: clean everything)
    assert body["errors"][0]["loc"] == ["older_than_s"]
    assert await pg.fetchval("SELECT count(*) FROM jobs") == 1


async def test_retry_failed_reruns_every_failed_job_of_the_queue(api: Api, start_worker: StartWorker, pg: Conn) -> None:
    jobs = [await api.submit("system.echo", {"data": i}) for i in range(2)]
    await pg.execute("UPDATE jobs SET status = 'failed', attempts = 5, finished_at = now()")

    status, body, _ = await api.request("POST", "/api/v1/queues/default/retry-failed", **ADMIN)
    assert (status, body) == (200, {"retried": 2, "skipped": 0})

    await start_worker("default")
    for job in jobs:
        done = await api.wait_status(job["id"], "succeeded")
        assert done["attempts"] == 1


async def test_health_raises_alerts_by_threshold(services: Services, pg: Conn, jobs_redis: Redis) -> None:
    async with running_gateway(gateway_settings(services, alert_queued=1, alert_failed=0)) as api:
        for _ in range(2):
            await api.submit("system.echo", {})
        status, health, _ = await api.request("GET", "/api/v1/queues/health", **ADMIN)

    assert status == 200
    assert health["healthy"] is False
    assert {"queue": "default", "severity": "warning", "message": "2 jobs waiting"} in health["alerts"]
    assert {"queue": "default", "severity": "critical", "message": "no live worker"} in health["alerts"]
