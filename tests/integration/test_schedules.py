"""Schedules: CRUD and validation, and each due fire time becomes exactly one job however many schedulers run."""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo
from typing import Any

from support.helpers import eventually
from support.stack import Api, Conn, StartWorker

ECHO = {"type": "system.echo", "payload": {"data": "tick"}}


async def _create(api: Api, **body: Any) -> tuple[int, dict[str, Any]]:
    status, schedule, _ = await api.request(
        "POST", "/api/v1/schedules", json={"name": "nightly", "cron": "0 2 * * *", "job": ECHO, **body}
    )
    return status, schedule


async def _sentinel_fired(api: Api, pg: Conn) -> None:
    """Make another schedule due and wait for its job: a scheduler pass begun after this call has ended."""
    _, sentinel = await _create(api, name="sentinel", cron="0 0 1 1 *")
    await pg.execute("UPDATE schedules SET next_run_at = now() - interval '1 second' WHERE id = $1", sentinel["id"])

    async def fired() -> str | None:
        _, current, _ = await api.request("GET", f"/api/v1/schedules/{sentinel['id']}")
        job_id: str | None = current["last_job_id"]
        return job_id

    await eventually(fired, within=10)


async def test_create_computes_the_next_run_in_its_time_zone(api: Api) -> None:
    status, schedule = await _create(api, timezone="Europe/Paris")

    assert status == 201
    next_run = dt.datetime.fromisoformat(schedule["next_run_at"]).astimezone(zoneinfo.ZoneInfo("Europe/Paris"))
    assert (next_run.hour, next_run.minute) == (2, 0)
    assert next_run > dt.datetime.now(dt.UTC)
    _, fetched, _ = await api.request("GET", f"/api/v1/schedules/{schedule['id']}")
    assert fetched == schedule


async def test_bad_cron_and_unknown_time_zone_are_422(api: Api) -> None:
    status, body = await _create(api, cron="61 * * * *")
    assert status == 422
    assert body["errors"][0]["loc"] == ["cron"]

    status, body = await _create(api, timezone="Mars/Olympus")
    assert status == 422
    assert body["errors"][0]["loc"] == ["timezone"]

    status, body = await _create(api, job={"type": "email.send", "payload": {}})
    assert status == 422
    assert body["errors"][0]["loc"][:2] == ["job", "payload"]


async def test_a_schedule_takes_no_value_its_schema_refuses(api: Api) -> None:
    _, schedule = await _create(api)
    path = f"/api/v1/schedules/{schedule['id']}"

    for patch, loc in [
        ({"end_at": 0}, ["end_at"]),  # a number is no time (it would have meant 1970: never fire again)
        ({"end_at": "2030-01-01 02:00:00Z"}, ["end_at"]),  # not RFC 3339
        ({"end_at": "0093-01-04T16:32:41Z"}, ["end_at"]),  # before 2000 (and shown as `93-01-04…`)
        ({"enabled": "false"}, ["enabled"]),
        ({"job": {**ECHO, "idempotency_key": "k"}}, ["job", "idempotency_key"]),
    ]:
        status, body, _ = await api.request("PATCH", path, json=patch)
        assert status == 422, patch
        assert body["errors"][0]["loc"] == loc, body
    _, unchanged, _ = await api.request("GET", path)
    assert unchanged == schedule


async def test_times_are_taken_up_to_the_year_8999(api: Api) -> None:
    status, schedule = await _create(api, start_at="8999-12-31T23:59:59-23:59")
    assert status == 201, schedule
    assert schedule["next_run_at"].startswith("9000-01-02T02:00:00")

    status, body = await _create(api, name="later", start_at="9999-12-31T23:59:59Z")  # its first run overflowed: 500
    assert status == 422, body
    assert body["errors"][0]["loc"] == ["start_at"]


async def test_names_are_unique_per_owner(api: Api) -> None:
    assert (await _create(api))[0] == 201
    assert (await _create(api))[0] == 409
    status, _, _ = await api.request(
        "POST", "/api/v1/schedules", json={"name": "nightly", "cron": "0 2 * * *", "job": ECHO}, as_="bob"
    )
    assert status == 201


async def test_the_list_is_paginated_newest_first(api: Api) -> None:
    for name in ("a", "b", "c"):
        assert (await _create(api, name=name))[0] == 201

    _, first, _ = await api.request("GET", "/api/v1/schedules?limit=2")
    _, rest, _ = await api.request("GET", f"/api/v1/schedules?limit=2&cursor={first['next_cursor']}")

    assert [s["name"] for s in first["items"]] == ["c", "b"]
    assert [s["name"] for s in rest["items"]] == ["a"]
    assert rest["next_cursor"] is None


async def test_patch_delete_and_ownership(api: Api) -> None:
    _, schedule = await _create(api)
    path = f"/api/v1/schedules/{schedule['id']}"

    assert (await api.request("GET", path, as_="mallory"))[0] == 404
    status, patched, _ = await api.request("PATCH", path, json={"enabled": False, "cron": "30 3 * * *"})
    assert status == 200
    assert (patched["enabled"], patched["cron"]) == (False, "30 3 * * *")
    assert dt.datetime.fromisoformat(patched["next_run_at"]).minute == 30
    _, listing, _ = await api.request("GET", "/api/v1/schedules")
    assert [s["id"] for s in listing["items"]] == [schedule["id"]]

    assert (await api.request("DELETE", path, as_="mallory"))[0] == 404
    assert (await api.request("DELETE", path))[0] == 204
    assert (await api.request("GET", path))[0] == 404


async def test_a_due_fire_makes_exactly_one_job_across_three_schedulers(
    api: Api, start_worker: StartWorker, pg: Conn
) -> None:
    # Fires once a year, so the only fire in this test is the one made due below.
    _, schedule = await _create(api, cron="0 0 1 1 *")
    for _ in range(3):
        await start_worker("scheduler")
    await start_worker("default")
    await pg.execute("UPDATE schedules SET next_run_at = now() - interval '1 second'")

    async def fired() -> str | None:
        _, current, _ = await api.request("GET", f"/api/v1/schedules/{schedule['id']}")
        job_id: str | None = current["last_job_id"]
        return job_id

    job_id = await eventually(fired, within=10)
    await api.wait_status(job_id, "succeeded")
    await asyncio.sleep(1.5)  # every scheduler has had its turn at the same fire time
    assert await pg.fetchval("SELECT count(*) FROM jobs") == 1
    assert await pg.fetchval("SELECT count(*) FROM schedule_runs") == 1


async def test_runs_missed_while_down_fire_once_on_start(api: Api, start_worker: StartWorker, pg: Conn) -> None:
    _, schedule = await _create(api, cron="0 0 1 1 *")
    await pg.execute("UPDATE schedules SET next_run_at = now() - interval '3 years'")  # 3 fires missed

    await start_worker("scheduler")

    async def fired() -> dict[str, Any] | None:
        _, current, _ = await api.request("GET", f"/api/v1/schedules/{schedule['id']}")
        return current if current["last_job_id"] else None

    current = await eventually(fired, within=10)
    await _sentinel_fired(api, pg)  # the scheduler has made a whole pass since: no second fire came of it
    assert await pg.fetchval("SELECT count(*) FROM schedule_runs WHERE schedule_id = $1", schedule["id"]) == 1
    assert await pg.fetchval("SELECT count(*) FROM jobs") == 2, "one job of the schedule, one of the sentinel"
    assert dt.datetime.fromisoformat(current["next_run_at"]) > dt.datetime.now(dt.UTC)


async def test_skip_if_running_does_not_pile_up(api: Api, start_worker: StartWorker, pg: Conn) -> None:
    _, schedule = await _create(api, cron="* * * * *", overlap="skip_if_running")
    await start_worker("scheduler")  # no worker for the default queue: the first job stays queued
    await pg.execute("UPDATE schedules SET next_run_at = now() - interval '1 second'")

    async def fired() -> bool | None:
        return True if await pg.fetchval("SELECT count(*) FROM jobs") == 1 else None

    await eventually(fired, within=10)
    await pg.execute("UPDATE schedules SET next_run_at = now() - interval '1 second'")

    async def passed_over() -> bool | None:  # the scheduler handled this fire time and moved on
        _, current, _ = await api.request("GET", f"/api/v1/schedules/{schedule['id']}")
        return True if dt.datetime.fromisoformat(current["next_run_at"]) > dt.datetime.now(dt.UTC) else None

    await eventually(passed_over, within=10)
    assert await pg.fetchval("SELECT count(*) FROM jobs") == 1, "no second job while the first is unfinished"
