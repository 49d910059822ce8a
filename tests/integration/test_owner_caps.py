"""MAX_QUEUED_PER_OWNER counts every way a job is made (a replay past the idempotency window, a retry, a
schedule's fire, a batch's on_complete), and MAX_SCHEDULES_PER_OWNER caps an owner's schedules."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from shared.core.settings import SecurityConfig
from support.helpers import eventually
from support.stack import Api, Conn, Services, StartWorker, gateway_settings, running_gateway

ADMIN = {"as_": "root", "role": "admin"}


def _later(data: Any, **extra: Any) -> dict[str, Any]:
    """A job that waits (scheduled an hour ahead): it holds a place under the cap for the whole test."""
    return {"type": "system.echo", "payload": {"data": data}, "delay_s": 3600, **extra}


@contextlib.asynccontextmanager
async def capped(services: Services, monkeypatch: pytest.MonkeyPatch, **caps: int) -> AsyncIterator[Api]:
    """A gateway with these caps; workers started afterwards read the same ones from the environment."""
    for name, value in caps.items():
        monkeypatch.setenv(name.upper(), str(value))
    security = SecurityConfig.model_validate(caps)
    async with running_gateway(gateway_settings(services, security=security)) as api:
        yield api


async def _post(api: Api, body: dict[str, Any], *, as_: str = "alice") -> tuple[int, dict[str, Any]]:
    status, job, _ = await api.request("POST", "/api/v1/jobs", as_=as_, json=body)
    return status, job


async def test_a_key_reused_past_the_idempotency_window_counts_as_a_new_job(
    services: Services, pg: Conn, jobs_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with capped(services, monkeypatch, max_queued_per_owner=2) as api:
        assert (await _post(api, _later("a", idempotency_key="k")))[0] == 202
        await pg.execute("UPDATE jobs SET created_at = now() - interval '25 hours'")
        assert (await _post(api, _later("b")))[0] == 202

        fresh, _ = await _post(api, _later("a", idempotency_key="k"))  # would record a third waiting job

        assert fresh == 429
        assert await pg.fetchval("SELECT count(*) FROM jobs") == 2


async def test_retry_failed_retries_each_owner_within_its_room(
    services: Services, pg: Conn, jobs_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with capped(services, monkeypatch, max_queued_per_owner=2) as api:
        for owner in ("alice", "alice", "bob"):
            assert (await _post(api, {"type": "system.echo", "payload": {}}, as_=owner))[0] == 202
        await pg.execute("UPDATE jobs SET status = 'failed', attempts = 5, finished_at = now()")
        for data in ("a", "b"):  # alice's room is used up again
            assert (await _post(api, _later(data)))[0] == 202

        status, body, _ = await api.request("POST", "/api/v1/queues/default/retry-failed", **ADMIN)

        assert (status, body) == (200, {"retried": 1, "skipped": 2})
        assert await pg.fetchval("SELECT owner FROM jobs WHERE status = 'queued'") == "bob"
        assert await pg.fetchval("SELECT count(*) FROM jobs WHERE status = 'failed' AND owner = 'alice'") == 2


async def test_retrying_one_job_counts_against_its_owners_cap(
    services: Services, pg: Conn, jobs_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with capped(services, monkeypatch, max_queued_per_owner=2) as api:
        _, failed = await _post(api, {"type": "system.echo", "payload": {}})
        await pg.execute("UPDATE jobs SET status = 'failed', attempts = 5, finished_at = now()")
        for data in ("a", "b"):  # alice's room is used up
            assert (await _post(api, _later(data)))[0] == 202

        refused, problem, _ = await api.request("POST", f"/api/v1/jobs/{failed['id']}/retry", as_="alice")
        await pg.execute("DELETE FROM jobs WHERE id <> $1", failed["id"])  # room again
        retried, _, _ = await api.request("POST", f"/api/v1/jobs/{failed['id']}/retry", as_="alice")

        assert refused == 429
        assert problem["status"] == 429
        assert retried == 202


async def test_a_fire_over_the_cap_is_skipped_and_the_schedule_moves_on(
    services: Services, pg: Conn, jobs_redis: Redis, start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with capped(services, monkeypatch, max_queued_per_owner=2) as api:
        ids = {}
        for owner in ("alice", "bob"):
            status, schedule, _ = await api.request(
                "POST", "/api/v1/schedules", as_=owner,
                json={"name": "n", "cron": "0 0 1 1 *", "job": {"type": "system.echo", "payload": {}}},
            )  # fmt: skip
            assert status == 201, schedule
            ids[owner] = schedule["id"]
        for data in ("a", "b"):
            assert (await _post(api, _later(data)))[0] == 202
        await pg.execute("UPDATE schedules SET next_run_at = now() - interval '1 second'")

        await start_worker("scheduler")

        async def fired() -> str | None:
            _, current, _ = await api.request("GET", f"/api/v1/schedules/{ids['bob']}", as_="bob")
            job_id: str | None = current["last_job_id"]
            return job_id

        await eventually(fired)
        _, skipped, _ = await api.request("GET", f"/api/v1/schedules/{ids['alice']}")
        assert skipped["last_job_id"] is None
        assert skipped["last_skip_reason"] == "queue_cap"
        assert skipped["last_skipped_at"] == skipped["last_run_at"]
        assert skipped["enabled"] is True
        assert skipped["next_run_at"] > skipped["last_run_at"]  # it moves on to its next fire time
        assert await pg.fetchval("SELECT count(*) FROM jobs WHERE owner = 'alice'") == 2


async def test_an_on_complete_over_the_cap_is_recorded_failed_with_the_reason(
    services: Services, pg: Conn, jobs_redis: Redis, start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with capped(services, monkeypatch, max_queued_per_owner=2) as api:
        status, batch, _ = await api.request(
            "POST", "/api/v1/batches",
            json={"jobs": [{"type": "system.echo", "payload": {}}], "on_complete": {"type": "system.echo"}},
        )  # fmt: skip
        assert status == 202, batch
        # Its member finished (its worker died before completing the batch); alice filled her room meanwhile.
        await pg.execute("UPDATE jobs SET status = 'succeeded', finished_at = now()")
        await pg.execute("UPDATE batches SET created_at = now() - interval '1 minute'")
        for data in ("a", "b"):
            assert (await _post(api, _later(data)))[0] == 202

        await start_worker("scheduler")

        async def completed() -> str | None:
            _, view, _ = await api.request("GET", f"/api/v1/batches/{batch['id']}")
            job_id: str | None = view["on_complete_job_id"]
            return job_id

        on_complete = await api.job(await eventually(completed))
        assert on_complete["status"] == "failed"
        assert on_complete["error"]["type"] == "QueueFull"
        assert "MAX_QUEUED_PER_OWNER" in on_complete["error"]["message"]
        assert on_complete["attempts"] == 0
        assert await pg.fetchval("SELECT count(*) FROM jobs WHERE status IN ('queued', 'scheduled')") == 2

        await pg.execute("UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE status = 'scheduled'")
        status, retried, _ = await api.request("POST", f"/api/v1/jobs/{on_complete['id']}/retry")
        assert (status, retried["status"]) == (202, "queued")  # once there is room, the owner runs it


async def test_schedules_are_capped_per_owner(
    services: Services, pg: Conn, jobs_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with capped(services, monkeypatch, max_schedules_per_owner=2) as api:

        async def create(name: str, as_: str = "alice") -> tuple[int, dict[str, Any]]:
            body = {"name": name, "cron": "0 2 * * *", "job": {"type": "system.echo", "payload": {}}}
            status, schedule, _ = await api.request("POST", "/api/v1/schedules", as_=as_, json=body)
            return status, schedule

        assert [(await create(name))[0] for name in ("a", "b")] == [201, 201]
        status, body = await create("c")
        bobs, _ = await create("c", as_="bob")

        assert status == 409
        assert body["code"] == "schedule_limit_reached"
        assert body["type"] == "/problems/schedule-limit-reached"
        assert "MAX_SCHEDULES_PER_OWNER" in body["detail"]
        assert bobs == 201
        assert await pg.fetchval("SELECT count(*) FROM schedules WHERE owner = 'alice'") == 2
