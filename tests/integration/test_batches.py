"""Batches: all members or none, counts, and on_complete enqueued exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from shared.core import json
from shared.infra import broker, db
from shared.infra.sealing import Sealer
from shared.jobtypes import builtin_registry
from shared.ledger import batch_submission
from support.helpers import eventually
from support.stack import TEST_ENCRYPTION_KEY as _KEY
from support.stack import Api, Conn, Services, StartWorker, postgres_config, redis_config


def _echo(data: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "system.echo", "payload": {"data": data}, **extra}


async def test_batch_runs_and_completes_once_with_its_id(api: Api, start_worker: StartWorker, pg: Conn) -> None:
    status, batch, resp = await api.request(
        "POST", "/api/v1/batches", json={"jobs": [_echo(i) for i in range(3)], "on_complete": _echo("done")}
    )
    assert status == 202
    assert batch["total"] == 3
    assert len(batch["job_ids"]) == 3
    assert resp.headers["Location"] == f"/api/v1/batches/{batch['id']}"
    _, running, _ = await api.request("GET", f"/api/v1/batches/{batch['id']}")
    assert (running["status"], running["pending"]) == ("running", 3)

    await start_worker("default")
    for job_id in batch["job_ids"]:
        member = await api.wait_status(job_id, "succeeded")
        assert member["batch_id"] == batch["id"]

    async def completed() -> dict[str, Any] | None:
        _, view, _ = await api.request("GET", f"/api/v1/batches/{batch['id']}")
        return view if view["on_complete_job_id"] else None

    view = await eventually(completed)
    assert view == {
        "id": batch["id"], "total": 3, "succeeded": 3, "failed": 0, "cancelled": 0, "pending": 0,
        "status": "succeeded", "on_complete_job_id": view["on_complete_job_id"],
    }  # fmt: skip
    on_complete = await api.wait_status(view["on_complete_job_id"], "succeeded")
    payload = json.loads(await pg.fetchval("SELECT payload FROM jobs WHERE id = $1", view["on_complete_job_id"]))
    assert payload["batch_id"] == batch["id"], "on_complete gets the batch id merged into its payload"
    assert payload["data"] == "done"
    assert on_complete["payload"]["batch_id"] == batch["id"], "and the job resource shows it"
    assert on_complete["payload"]["data"] == "done"


async def test_one_bad_member_records_nothing(api: Api, pg: Conn, jobs_redis: Redis) -> None:
    jobs = [_echo(1), {"type": "email.send", "payload": {"to": ["nope"], "subject": "x", "text": "y"}}]

    status, body, _ = await api.request("POST", "/api/v1/batches", json={"jobs": jobs})

    assert status == 422
    assert body["errors"][0]["loc"][:4] == ["jobs", 1, "payload", "to"]
    assert await pg.fetchval("SELECT count(*) FROM jobs") == 0
    assert await pg.fetchval("SELECT count(*) FROM batches") == 0
    assert await jobs_redis.dbsize() == 0


async def test_batch_size_is_1_to_1000(api: Api) -> None:
    for count in (0, 1001):
        status, body, _ = await api.request("POST", "/api/v1/batches", json={"jobs": [_echo(i) for i in range(count)]})
        assert status == 422, count
        assert body["errors"][0]["loc"] == ["jobs"]


async def test_invalid_on_complete_is_refused_up_front(api: Api) -> None:
    status, body, _ = await api.request(
        "POST", "/api/v1/batches", json={"jobs": [_echo(1)], "on_complete": {"type": "nope", "payload": {}}}
    )

    assert status == 422
    assert body["errors"][0]["loc"] == ["on_complete", "type"]


@pytest.mark.parametrize("batch_id", ["bat_forged", {}, 7])
async def test_on_complete_may_not_set_its_batch_id(api: Api, pg: Conn, batch_id: object) -> None:
    on_complete = {"type": "system.echo", "payload": {"batch_id": batch_id}}

    status, body, _ = await api.request(
        "POST", "/api/v1/batches", json={"jobs": [_echo(1)], "on_complete": on_complete}
    )

    assert status == 422, body
    assert body["errors"][0]["loc"][:3] == ["on_complete", "payload", "batch_id"]
    assert await pg.fetchval("SELECT count(*) FROM batches") == 0


async def test_members_take_no_idempotency_key_and_no_loosely_typed_payload(api: Api, pg: Conn) -> None:
    for member, loc in [
        ({**_echo(1), "idempotency_key": "k"}, ["jobs", 1, "idempotency_key"]),
        ({"type": "system.echo", "payload": {"fail_times": True}}, ["jobs", 1, "payload", "fail_times"]),
        ({"type": "system.echo", "payload": {"sleep_s": "1"}}, ["jobs", 1, "payload", "sleep_s"]),
    ]:
        status, body, _ = await api.request("POST", "/api/v1/batches", json={"jobs": [_echo(0), member]})
        assert status == 422, member
        assert body["errors"][0]["loc"] == loc, body
    assert await pg.fetchval("SELECT count(*) FROM jobs") == 0


async def test_concurrent_last_finishers_complete_the_batch_exactly_once(
    api: Api, services: Services, pg: Conn, jobs_redis: Redis
) -> None:
    _, batch, _ = await api.request(
        "POST", "/api/v1/batches", json={"jobs": [_echo(1), _echo(2)], "on_complete": _echo("x")}
    )
    await pg.execute("UPDATE jobs SET status = 'succeeded', finished_at = now()")
    redis = broker.jobs_redis(redis_config(services))

    async with db.open_pool(postgres_config(services), migrate=False) as pool:
        created = await asyncio.gather(
            *(
                batch_submission.complete_batch(
                    pool,
                    redis,
                    builtin_registry(),
                    batch["id"],
                    sealer=Sealer([_KEY]),
                    enqueue_timeout_s=1,
                    queue_cap=100,
                )
                for _ in range(10)
            )
        )
    await redis.aclose()

    assert len([c for c in created if c is not None]) == 1
    assert await pg.fetchval("SELECT count(*) FROM jobs WHERE batch_id IS NULL") == 1


async def test_cancelling_the_last_pending_member_completes_the_batch(api: Api, pg: Conn) -> None:
    _, batch, _ = await api.request(
        "POST", "/api/v1/batches", json={"jobs": [_echo(1), _echo(2)], "on_complete": _echo("x")}
    )
    await pg.execute("UPDATE jobs SET status = 'succeeded', finished_at = now() WHERE id = $1", batch["job_ids"][0])

    await api.request("POST", f"/api/v1/jobs/{batch['job_ids'][1]}/cancel")

    _, view, _ = await api.request("GET", f"/api/v1/batches/{batch['id']}")
    assert view["status"] == "cancelled"
    assert (view["succeeded"], view["cancelled"], view["pending"]) == (1, 1, 0)
    assert view["on_complete_job_id"] is not None


async def test_an_orphaned_batch_is_completed_by_the_scheduler(api: Api, start_worker: StartWorker, pg: Conn) -> None:
    _, batch, _ = await api.request("POST", "/api/v1/batches", json={"jobs": [_echo(1)], "on_complete": _echo("x")})
    # Its last member finished, but the worker died before completing the batch.
    await pg.execute("UPDATE jobs SET status = 'succeeded', finished_at = now()")
    await pg.execute("UPDATE batches SET created_at = now() - interval '1 minute'")

    await start_worker("scheduler")
    await start_worker("default")

    async def completed() -> str | None:
        _, view, _ = await api.request("GET", f"/api/v1/batches/{batch['id']}")
        job_id: str | None = view["on_complete_job_id"]
        return job_id

    await api.wait_status(await eventually(completed), "succeeded")


async def test_another_users_batch_is_404(api: Api) -> None:
    _, batch, _ = await api.request("POST", "/api/v1/batches", json={"jobs": [_echo(1)]}, as_="alice")

    status, _, _ = await api.request("GET", f"/api/v1/batches/{batch['id']}", as_="mallory")

    assert status == 404
