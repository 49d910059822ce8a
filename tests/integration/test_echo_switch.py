"""`system.echo` (sleeps and fails on demand: a test tool) is offered only where SYSTEM_ECHO_ENABLED says so,
by default under ENVIRONMENT=development: off, the gateway refuses and hides it and a worker will not run it."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from shared.core.settings import Environment, JobTypesConfig
from support.stack import Api, Conn, Services, StartWorker, gateway_settings, running_gateway

ECHO = {"type": "system.echo", "payload": {"data": 1}}


def test_it_is_on_by_default_only_in_development() -> None:
    assert JobTypesConfig(environment=Environment.DEVELOPMENT).echo_enabled
    assert not JobTypesConfig(environment=Environment.PRODUCTION).echo_enabled
    assert not JobTypesConfig(environment=Environment.TEST).echo_enabled
    assert JobTypesConfig(environment=Environment.PRODUCTION, system_echo=True).echo_enabled
    assert not JobTypesConfig(environment=Environment.DEVELOPMENT, system_echo=False).echo_enabled


async def test_turned_off_the_gateway_refuses_and_does_not_list_it(
    services: Services, pg: Conn, jobs_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYSTEM_ECHO_ENABLED", "false")
    async with running_gateway(gateway_settings(services)) as api:
        status, body, _ = await api.request("POST", "/api/v1/jobs", json=ECHO)
        batch, _, _ = await api.request("POST", "/api/v1/batches", json={"jobs": [ECHO]})
        schedule, _, _ = await api.request(
            "POST", "/api/v1/schedules", json={"name": "n", "cron": "0 2 * * *", "job": ECHO}
        )
        _, types, _ = await api.request("GET", "/api/v1/job-types")

    assert status == 422
    assert body["errors"][0]["loc"] == ["type"]
    assert body["errors"][0]["type"] == "unknown_type"
    assert "system.echo" not in body["errors"][0]["msg"]  # not among the known types it lists
    assert (batch, schedule) == (422, 422)
    names = {t["type"] for t in types["items"]}
    assert "system.echo" not in names
    assert "email.send" in names
    assert await pg.fetchval("SELECT count(*) FROM jobs") == 0


async def test_turned_on_it_is_offered(
    services: Services, pg: Conn, jobs_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "test")  # off by default there
    monkeypatch.setenv("SYSTEM_ECHO_ENABLED", "true")
    async with running_gateway(gateway_settings(services)) as api:
        status, _, _ = await api.request("POST", "/api/v1/jobs", json=ECHO)
        _, types, _ = await api.request("GET", "/api/v1/job-types")

    assert status == 202
    assert "system.echo" in {t["type"] for t in types["items"]}


async def test_a_worker_where_it_is_off_fails_it_at_once(
    api: Api, start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await api.submit("system.echo", {"data": 1, "sleep_s": 30}, max_attempts=5)  # queued while it was on
    monkeypatch.setenv("SYSTEM_ECHO_ENABLED", "false")

    await start_worker("default")

    done = await api.wait_status(job["id"], "failed")
    assert done["attempts"] == 1
    assert done["error"]["type"] == "JobTypeDisabled"
    assert "SYSTEM_ECHO_ENABLED" in done["error"]["message"]
    assert done["error"]["retryable"] is False
