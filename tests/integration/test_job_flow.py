"""Enqueue over HTTP -> a worker runs it -> the ledger and GET show the outcome."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from redis.asyncio import Redis

from shared.core import json
from support.stack import Api, Conn, StartWorker


async def test_echo_job_succeeds_with_its_result(api: Api, start_worker: StartWorker, pg: Conn) -> None:
    await start_worker("default")
    job = await api.submit("system.echo", {"data": {"hello": ["world", 1]}})
    assert job["status"] == "queued"
    assert job["links"]["self"] == f"/api/v1/jobs/{job['id']}"

    done = await api.wait_status(job["id"], "succeeded")

    assert done["result"] == {"data": {"hello": ["world", 1]}, "attempt": 1}
    assert done["attempts"] == 1
    assert done["error"] is None
    assert done["started_at"] is not None
    assert done["finished_at"] is not None
    row = await pg.fetchrow("SELECT status, result FROM jobs WHERE id = $1", job["id"])
    assert row is not None
    assert row["status"] == "succeeded"


async def test_accepted_job_is_in_the_ledger_before_any_worker_runs(api: Api, pg: Conn) -> None:
    status, body, resp = await api.request("POST", "/api/v1/jobs", json={"type": "system.echo", "payload": {}})

    assert status == 202
    assert resp.headers["Location"] == f"/api/v1/jobs/{body['id']}"
    assert await pg.fetchval("SELECT status FROM jobs WHERE id = $1", body["id"]) == "queued"


async def test_transient_failures_retry_with_backoff_then_succeed(api: Api, start_worker: StartWorker) -> None:
    await start_worker("default")
    job = await api.submit("system.echo", {"data": "x", "fail_times": 2})

    done = await api.wait_status(job["id"], "succeeded", within=20)

    assert done["attempts"] == 3
    assert done["result"] == {"data": "x", "attempt": 3}


async def test_a_retrying_job_shows_its_last_error(api: Api, start_worker: StartWorker) -> None:
    await start_worker("default")
    job = await api.submit("system.echo", {"fail_times": 5}, max_attempts=6)

    retrying = await api.wait_status(job["id"], "retrying")

    assert retrying["error"]["type"] == "EchoFailure"
    assert retrying["error"]["retryable"] is True
    assert retrying["scheduled_for"] > retrying["started_at"]


async def test_exhausted_attempts_leave_the_job_failed_with_its_history(
    api: Api, start_worker: StartWorker, pg: Conn
) -> None:
    await start_worker("default")
    job = await api.submit("system.echo", {"fail_times": 10}, max_attempts=2)

    failed = await api.wait_status(job["id"], "failed", within=20)

    assert failed["attempts"] == 2
    assert failed["error"]["type"] == "EchoFailure"
    assert failed["result"] is None
    assert [e["attempt"] for e in failed["errors"]] == [1, 2], "the dead letter keeps every attempt's error"
    assert {e["type"] for e in failed["errors"]} == {"EchoFailure"}


async def test_timeout_is_enforced(api: Api, start_worker: StartWorker) -> None:
    await start_worker("default")
    job = await api.submit("system.echo", {"sleep_s": 30}, timeout_s=0.3, max_attempts=1)

    failed = await api.wait_status(job["id"], "failed", within=10)

    assert failed["error"]["type"] == "JobTimeout"
    assert "0.3" in failed["error"]["message"]


async def test_timeout_over_the_types_cap_is_refused(api: Api) -> None:
    status, body, _ = await api.request(
        "POST", "/api/v1/jobs", json={"type": "system.echo", "payload": {}, "timeout_s": 10_000}
    )

    assert status == 422
    assert body["errors"][0]["loc"] == ["timeout_s"]


async def test_bad_payload_is_422_and_nothing_is_queued(api: Api, pg: Conn, jobs_redis: Redis) -> None:
    status, body, resp = await api.request(
        "POST", "/api/v1/jobs", json={"type": "email.send", "payload": {"to": ["not-an-address"], "subject": "x"}}
    )

    assert status == 422
    assert resp.content_type == "application/problem+json"
    locs = [e["loc"] for e in body["errors"]]
    assert ["payload", "to", 0] in locs
    assert await pg.fetchval("SELECT count(*) FROM jobs") == 0
    assert await jobs_redis.dbsize() == 0


@pytest.mark.parametrize(
    ("payload", "loc"),
    [
        ({"fail_times": False}, ["payload", "fail_times"]),  # a boolean is no number
        ({"sleep_s": "0.5"}, ["payload", "sleep_s"]),  # nor a string
        ({"fail_times": 1.5}, ["payload", "fail_times"]),  # nor a fraction an integer
    ],
)
async def test_a_payload_is_held_to_its_schema_without_coercion(api: Api, payload: object, loc: list[str]) -> None:
    status, body, _ = await api.request("POST", "/api/v1/jobs", json={"type": "system.echo", "payload": payload})

    assert status == 422, body
    assert body["errors"][0]["loc"] == loc


async def test_a_whole_number_written_as_a_float_is_an_integer(api: Api) -> None:
    job = await api.submit("system.echo", {"fail_times": 2.0, "sleep_s": 0})  # JSON Schema: 2.0 is an integer

    assert job["payload"]["fail_times"] == 2


async def test_unknown_type_is_422(api: Api) -> None:
    status, body, _ = await api.request("POST", "/api/v1/jobs", json={"type": "nope.nothing", "payload": {}})

    assert status == 422
    assert body["errors"][0]["loc"] == ["type"]
    assert "system.echo" in body["errors"][0]["msg"]


async def test_delayed_job_is_scheduled_and_waits(api: Api, start_worker: StartWorker) -> None:
    await start_worker("default")
    job = await api.submit("system.echo", {}, delay_s=1.5)
    assert job["status"] == "scheduled"

    done = await api.wait_status(job["id"], "succeeded", within=10)

    assert done["started_at"] >= job["scheduled_for"]


async def test_delay_and_run_at_together_are_refused(api: Api) -> None:
    in_an_hour = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    status, body, _ = await api.request(
        "POST",
        "/api/v1/jobs",
        json={"type": "system.echo", "payload": {}, "delay_s": 1, "run_at": in_an_hour},
    )

    assert status == 422
    assert "not both" in body["errors"][0]["msg"]


async def test_expired_job_fails_without_running(api: Api, start_worker: StartWorker) -> None:
    job = await api.submit("system.echo", {"data": 1}, delay_s=0.5, expires_in_s=0.2)
    await start_worker("default")

    failed = await api.wait_status(job["id"], "failed", within=10)

    assert failed["error"]["type"] == "JobExpired"
    assert failed["result"] is None
    assert failed["started_at"] is None, "an expired job never starts"
    assert failed["attempts"] == 0


async def _first_event(api: Api, job_id: str) -> dict[str, Any]:
    """The `event: job` a job's event stream opens with."""
    async with api.session.get(f"{api.base}/api/v1/jobs/{job_id}/events", headers=api.auth()) as resp:
        assert resp.status == 200
        event = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "job":
                data: dict[str, Any] = json.loads(line.removeprefix("data: "))
                return data
    raise AssertionError("the stream ended without an `event: job`")


async def test_the_job_resource_shows_its_payload_and_a_list_item_links_to_it(api: Api) -> None:
    created = await api.submit("system.echo", {"data": {"order": 42}, "sleep_s": 1.5})
    _, listed, _ = await api.request("GET", "/api/v1/jobs")
    fetched = await api.job(created["id"])
    streamed = await _first_event(api, created["id"])

    assert created["payload"]["data"] == {"order": 42}
    assert created["payload"]["sleep_s"] == 1.5
    assert fetched["payload"] == created["payload"]
    assert "payload" not in listed["items"][0]  # a list item is a summary: its link has the whole job
    assert listed["items"][0]["links"]["self"] == f"/api/v1/jobs/{created['id']}"
    assert streamed["payload"] == created["payload"]


async def test_a_secret_payload_field_shows_redacted_and_is_never_opened(api: Api, pg: Conn) -> None:
    payload = {"url": "https://hooks.example.com/in", "event": "order.paid", "headers": {"Authorization": "Bearer s3"}}
    created = await api.submit("webhook.deliver", payload)
    status, raw, _ = await api.request("GET", f"/api/v1/jobs/{created['id']}")
    _, listed, _ = await api.request("GET", "/api/v1/jobs")
    streamed = await _first_event(api, created["id"])

    assert status == 200
    for shown in (created, raw, streamed):
        assert shown["payload"]["headers"] == "[redacted]"
        assert shown["payload"]["url"] == payload["url"]
        assert shown["payload"]["event"] == "order.paid"
    assert "Bearer s3" not in json.dumps(listed).decode()
    stored = json.loads(await pg.fetchval("SELECT payload FROM jobs WHERE id = $1", created["id"]))
    assert set(stored["headers"]) == {"$sealed"}, "sealed at rest, and only redacted on the way out"
