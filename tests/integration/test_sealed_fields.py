"""Secret payload fields: ciphertext in PostgreSQL and Redis, plain only inside the worker, redacted when shown."""

from __future__ import annotations

from redis.asyncio import Redis

from shared.core import json
from support.receiver import running_receiver
from support.stack import Api, Conn, StartWorker

SECRET = "tok-7f3a-very-secret"


async def _everything_in_redis(client: Redis) -> bytes:
    """Every key, and every value of arq's kinds (strings: jobs, results, markers; sorted sets: queues)."""
    dumped = []
    async for key in client.scan_iter(count=1000):
        kind = await client.type(key)
        if kind == b"string":
            dumped.append(await client.get(key) or b"")
        elif kind == b"zset":
            dumped.extend(m for m, _ in await client.zrange(key, 0, -1, withscores=True))
        dumped.append(key)
    return b"\n".join(dumped)


async def test_webhook_headers_are_sealed_at_rest_and_reach_the_receiver_in_clear(
    api: Api, pg: Conn, jobs_redis: Redis, start_worker: StartWorker
) -> None:
    async with running_receiver() as receiver:
        payload = {"url": receiver.url(), "event": "order.paid", "data": {"n": 1}, "headers": {"X-Token": SECRET}}
        job = await api.submit("webhook.deliver", payload, delay_s=60)  # parked: nothing runs it yet

        stored = await pg.fetchval("SELECT payload::text FROM jobs WHERE id = $1", job["id"])
        assert SECRET not in stored
        assert '"$sealed"' in stored
        assert SECRET.encode() not in await _everything_in_redis(jobs_redis)

        await pg.execute("UPDATE jobs SET scheduled_for = now() WHERE id = $1", job["id"])
        await api.request("POST", f"/api/v1/jobs/{job['id']}/cancel")
        await api.request("POST", f"/api/v1/jobs/{job['id']}/retry")  # due now, same sealed payload
        await start_worker("default")
        done = await api.wait_status(job["id"], "succeeded", "failed")

    assert done["status"] == "succeeded", done["error"]
    assert [h.headers.get("X-Token") for h in receiver.at("/hook")] == [SECRET]


async def test_a_schedules_secret_fields_are_sealed_and_shown_redacted(api: Api, pg: Conn) -> None:
    job = {
        "type": "webhook.deliver",
        "payload": {"url": "https://example.com/hook", "event": "tick", "headers": {"Authorization": SECRET}},
    }
    status, created, _ = await api.request(
        "POST", "/api/v1/schedules", json={"name": "hourly", "cron": "0 * * * *", "timezone": "UTC", "job": job}
    )
    assert status == 201, created
    assert created["job"]["payload"]["headers"] == "[redacted]"
    assert created["job"]["payload"]["url"] == "https://example.com/hook"
    stored = await pg.fetchval("SELECT job::text FROM schedules WHERE id = $1", created["id"])
    assert SECRET not in stored

    status, shown, _ = await api.request("GET", f"/api/v1/schedules/{created['id']}")
    assert status == 200
    assert shown["job"]["payload"]["headers"] == "[redacted]"


async def test_an_email_context_value_the_caller_flags_is_sealed(api: Api, pg: Conn) -> None:
    payload = {
        "to": ["ann@example.com"], "subject": "Reset", "template": "welcome",
        "context": {"name": "Ann", "url": f"https://example.com/reset?k={SECRET}"}, "secret_context": ["url"],
    }  # fmt: skip
    job = await api.submit("email.send", payload, delay_s=60)
    stored = await pg.fetchval("SELECT payload::text FROM jobs WHERE id = $1", job["id"])
    assert SECRET not in stored
    assert "Ann" in stored


async def test_a_sealed_value_sent_by_a_client_is_refused_not_opened(api: Api, pg: Conn) -> None:
    """Only Conveyor seals: a leaked sealed value sent back in a readable field must not be decrypted for it."""
    leaked = await _sealed_headers(api, pg)
    for field in ({"data": leaked}, {"data": {"$sealed": "not-a-token"}}, {"data": [{"$sealed": "é"}]}):
        for path, body in [
            ("/api/v1/jobs", {"type": "system.echo", "payload": field}),
            ("/api/v1/batches", {"jobs": [{"type": "system.echo", "payload": field}]}),
        ]:
            status, problem, _ = await api.request("POST", path, json=body)
            assert status == 422, (path, problem)
            assert SECRET not in str(problem)
    assert await pg.fetchval("SELECT count(*) FROM jobs WHERE type = 'system.echo'") == 0


async def _sealed_headers(api: Api, pg: Conn) -> object:
    payload = {"url": "https://example.com/hook", "event": "e", "headers": {"X-Token": SECRET}}
    job = await api.submit("webhook.deliver", payload, delay_s=60)
    stored = await pg.fetchval("SELECT payload->'headers' FROM jobs WHERE id = $1", job["id"])
    return json.loads(stored)
