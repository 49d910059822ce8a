"""`notification.push` and the notifications API: stored once per job, listed, marked read, pushed live."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp

from gateway.keys import METRICS
from shared.core import json
from shared.core.metrics import Metrics
from shared.core.settings import SecurityConfig
from shared.infra import broker, db, redis
from shared.infra.sealing import Sealer
from shared.jobtypes import builtin_registry
from shared.jobtypes.notification import NotificationPayload
from support.helpers import eventually
from support.stack import Api, Conn, Services, StartWorker, gateway_settings, running_gateway, worker_settings
from support.tcp_proxy import TcpProxy
from workers.context import JobContext, WorkerContext
from workers.families.email.sender import SmtpMailSender
from workers.families.notification.handler import handle_push

Events = asyncio.Queue[tuple[str, Any]]


@contextlib.asynccontextmanager
async def notification_stream(
    api: Api, *, as_: str = "alice", session: aiohttp.ClientSession | None = None, last_event_id: str | None = None
) -> AsyncIterator[Events]:
    """The caller's open notification stream: its (event, data) pairs, and ("end", None) when the server ends it."""
    headers = api.auth(as_) | ({"Last-Event-ID": last_event_id} if last_event_id else {})
    resp = await (session or api.session).get(f"{api.base}/api/v1/notifications/stream", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/event-stream"
    received: Events = asyncio.Queue()

    async def read() -> None:
        event = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                await received.put((event, json.loads(line.removeprefix("data: "))))
        await received.put(("end", None))

    reader = asyncio.create_task(read())
    try:
        yield received
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        resp.close()


async def push(api: Api, user: str, title: str, *, as_: str | None = None, **more: Any) -> dict[str, Any]:
    """Run a `notification.push` job to success; its finished job resource."""
    job = await api.submit("notification.push", {"user": user, "title": title, **more}, as_=as_ or user)
    return await api.wait_status(job["id"], "succeeded", "failed", as_=as_ or user)


async def test_push_is_stored_listed_and_marked_read(api: Api, start_worker: StartWorker) -> None:
    worker = await start_worker("default")
    first = await push(api, "alice", "Report ready", body="Your March report is ready.", kind="report")
    second = await push(api, "alice", "Welcome")

    assert first["status"] == "succeeded"
    first_id = first["result"]["notification_id"]
    status, listed, _ = await api.request("GET", "/api/v1/notifications")
    assert status == 200
    assert [n["title"] for n in listed["items"]] == ["Welcome", "Report ready"], "newest first"
    assert listed["items"][1] == {
        "id": first_id, "user": "alice", "title": "Report ready", "body": "Your March report is ready.",
        "kind": "report", "job_id": first["id"], "read": False, "read_at": None,
        "created_at": listed["items"][1]["created_at"],
    }  # fmt: skip
    assert listed["items"][0]["kind"] == "info"
    assert listed["items"][0]["body"] == ""
    assert worker.metrics.registry.get_sample_value("conveyor_worker_notifications_total") == 2

    status, page, _ = await api.request("GET", "/api/v1/notifications?limit=1")
    assert [n["id"] for n in page["items"]] == [second["result"]["notification_id"]]
    status, rest, _ = await api.request("GET", f"/api/v1/notifications?limit=1&cursor={page['next_cursor']}")
    assert [n["id"] for n in rest["items"]] == [first_id]
    assert rest["next_cursor"] is None

    status, read, _ = await api.request("POST", f"/api/v1/notifications/{first_id}/read")
    assert status == 200
    assert read["id"] == first_id
    assert read["read"] is True
    assert read["read_at"] is not None
    status, again, _ = await api.request("POST", f"/api/v1/notifications/{first_id}/read")
    assert status == 200
    assert again["read_at"] == read["read_at"], "marking read twice keeps the first time"

    status, unread, _ = await api.request("GET", "/api/v1/notifications?unread=true")
    assert [n["title"] for n in unread["items"]] == ["Welcome"]
    status, everything, _ = await api.request("GET", "/api/v1/notifications?unread=false")
    assert len(everything["items"]) == 2


async def test_bad_query_and_invalid_payload_are_refused(api: Api, pg: Conn) -> None:
    for query in ("unread=maybe", "limit=0", "limit=201", "cursor=garbage", "owner=bob"):
        status, problem, resp = await api.request("GET", f"/api/v1/notifications?{query}")
        assert status == 400, query
        assert resp.content_type == "application/problem+json"

    for payload in ({"title": "no user"}, {"user": "bob"}, {"user": "bob", "title": "x", "kind": "has space"}):
        body = {"type": "notification.push", "payload": payload}
        status, problem, resp = await api.request("POST", "/api/v1/jobs", json=body)
        assert status == 422, payload
        assert resp.content_type == "application/problem+json"
        assert problem["errors"]
    assert await pg.fetchval("SELECT count(*) FROM jobs") == 0, "nothing is queued"


async def test_a_user_may_notify_only_itself_and_an_admin_anyone(api: Api, pg: Conn) -> None:
    to_bob = {"type": "notification.push", "payload": {"user": "bob", "title": "Hi"}}
    for path, body in [
        ("/api/v1/jobs", to_bob),
        ("/api/v1/batches", {"jobs": [to_bob]}),
        ("/api/v1/schedules", {"name": "nag", "cron": "0 * * * *", "timezone": "UTC", "job": to_bob}),
    ]:
        status, problem, _ = await api.request("POST", path, as_="alice", json=body)
        assert status == 403, (path, problem)
        assert "payload.user" in problem["detail"]
    assert await pg.fetchval("SELECT count(*) FROM jobs") == 0
    assert await pg.fetchval("SELECT count(*) FROM schedules") == 0

    job = await api.submit("notification.push", {"user": "alice", "title": "Note to self"}, as_="alice")
    assert job["status"] == "queued"
    status, job, _ = await api.request("POST", "/api/v1/jobs", as_="root", role="admin", json=to_bob)
    assert status == 202, job


async def test_someone_elses_notification_is_404_and_admins_list_all(api: Api, start_worker: StartWorker) -> None:
    await start_worker("default")
    done = await push(api, "alice", "For alice only")
    notification_id = done["result"]["notification_id"]

    status, _problem, resp = await api.request("POST", f"/api/v1/notifications/{notification_id}/read", as_="bob")
    assert status == 404
    assert resp.content_type == "application/problem+json"
    status, _missing, _ = await api.request("POST", "/api/v1/notifications/ntf_unknown/read")
    assert status == 404
    status, listed, _ = await api.request("GET", "/api/v1/notifications", as_="bob")
    assert listed == {"items": [], "next_cursor": None}
    status, unread, _ = await api.request("GET", "/api/v1/notifications?unread=true")
    assert [n["read"] for n in unread["items"]] == [False], "bob's attempt marked nothing"

    status, everyone, _ = await api.request("GET", "/api/v1/notifications", as_="root", role="admin")
    assert [(n["id"], n["user"]) for n in everyone["items"]] == [(notification_id, "alice")]


async def test_the_same_job_run_twice_stores_one_notification(services: Services, pg: Conn) -> None:
    settings = worker_settings(services)
    metrics = Metrics()
    async with (
        db.open_pool(settings.postgres) as pool,
        redis.open_cache(settings.redis) as cache,
        broker.open_jobs_redis(settings.redis) as jobs_redis,
        aiohttp.ClientSession() as http,
    ):
        with ThreadPoolExecutor(1) as cpu:
            worker = WorkerContext(
                settings=settings, queue="default", pg=pool, cache=cache, jobs_redis=jobs_redis,
                mailer=SmtpMailSender(settings.smtp), metrics=metrics, registry=builtin_registry(), http=http, cpu=cpu,
                sealer=Sealer.from_config(settings.crypto),
            )  # fmt: skip
            payload = NotificationPayload(user="alice", title="Once")
            runs = []
            for attempt in (1, 2):
                job = JobContext(
                    job_id="job_twice", type="notification.push", owner="alice", attempt=attempt, max_attempts=8,
                    worker=worker,
                )  # fmt: skip
                runs.append(await handle_push(job, payload))

    assert runs[0].notification_id == runs[1].notification_id
    assert await pg.fetchval("SELECT count(*) FROM notifications WHERE job_id = 'job_twice'") == 1
    assert metrics.registry.get_sample_value("conveyor_worker_notifications_total") == 1, "counted once"


async def test_a_ledger_outage_during_the_insert_is_retried_to_one_notification(
    api: Api, services: Services, pg: Conn, pg_proxy: TcpProxy, start_worker: StartWorker
) -> None:
    """The worker loses PostgreSQL while its insert waits (behind a lock): the attempt fails retryably, the job
    runs again once PostgreSQL is back, and however the first insert ended there is one notification."""
    await start_worker("default", via=services.through_postgres_port(pg_proxy.port))
    async with pg.transaction():
        await pg.execute("LOCK TABLE notifications IN SHARE MODE")  # holds inserts back, reads go on
        job = await api.submit("notification.push", {"user": "alice", "title": "Through an outage"})

        async def insert_waiting() -> bool | None:
            await pg.execute("SELECT pg_stat_clear_snapshot()")  # activity is otherwise frozen for the transaction
            waiting = await pg.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO notifications%'"
            )
            return True if waiting else None

        await eventually(insert_waiting)
        pg_proxy.cut()
    pg_proxy.restore()

    done = await api.wait_status(job["id"], "succeeded", "failed", within=30)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    assert done["errors"][0]["retryable"] is True, done["errors"]
    rows = await pg.fetch("SELECT id FROM notifications WHERE job_id = $1", job["id"])
    assert [r["id"] for r in rows] == [done["result"]["notification_id"]]


async def test_stream_gets_only_the_callers_own_notifications(api: Api, start_worker: StartWorker) -> None:
    await start_worker("default")
    async with notification_stream(api, as_="alice") as alices, notification_stream(api, as_="bob") as bobs:
        for_bob = await push(api, "bob", "For bob")
        event, data = await asyncio.wait_for(bobs.get(), 10)
        assert event == "notification"
        assert data["id"] == for_bob["result"]["notification_id"]
        assert data["user"] == "bob"

        for_alice = await push(api, "alice", "For alice", body="hi", kind="mention")
        event, data = await asyncio.wait_for(alices.get(), 10)
        assert (event, data["id"], data["title"]) == (
            "notification",
            for_alice["result"]["notification_id"],
            "For alice",
        )
        assert data["read"] is False
        assert data["job_id"] == for_alice["id"]
        # bob's was published first on the same subscription: had alice's stream got it, it would be here.
        assert alices.empty()
        assert bobs.empty()


async def test_reconnecting_stream_catches_up_from_last_event_id(api: Api, start_worker: StartWorker) -> None:
    await start_worker("default")
    seen = await push(api, "alice", "Seen")
    missed = await push(api, "alice", "Missed")
    await push(api, "bob", "Not alice's")

    async with notification_stream(api, last_event_id=seen["result"]["notification_id"]) as events:
        event, data = await asyncio.wait_for(events.get(), 10)
        assert (event, data["id"]) == ("notification", missed["result"]["notification_id"])
        assert events.empty()


async def test_stream_ends_cleanly_when_the_gateway_stops(services: Services, pg: Conn) -> None:
    async with aiohttp.ClientSession() as client:
        async with running_gateway(gateway_settings(services)) as api:
            stream = notification_stream(api, session=client)
            events = await stream.__aenter__()
        assert await asyncio.wait_for(events.get(), 10) == ("end", None)
        await stream.__aexit__(None, None, None)


async def test_open_streams_are_capped_per_principal_across_gateways(services: Services, pg: Conn) -> None:
    settings = gateway_settings(services, security=SecurityConfig(sse_per_principal=2), sse_heartbeat_s=0.1)
    async with running_gateway(settings) as api, running_gateway(settings) as other:
        job = await api.submit("system.echo", {})  # no worker: it stays queued and its stream open
        async with aiohttp.ClientSession() as client:
            notes = await client.get(f"{api.base}/api/v1/notifications/stream", headers=api.auth())
            job_events = await client.get(f"{api.base}/api/v1/jobs/{job['id']}/events", headers=api.auth())
            assert (notes.status, job_events.status) == (200, 200)

            for gateway, path in ((api, "/api/v1/notifications/stream"), (other, f"/api/v1/jobs/{job['id']}/events")):
                status, problem, resp = await gateway.request("GET", path)
                assert status == 429, "the third stream of alice, whichever gateway and stream"
                assert resp.content_type == "application/problem+json"
                assert problem["type"] == "/problems/rate-limited"
                assert int(resp.headers["Retry-After"]) > 0
            metrics = api.app[METRICS]
            assert metrics.registry.get_sample_value("conveyor_gateway_rate_limited_total", {"reason": "sse"}) == 1
            assert metrics.registry.get_sample_value("conveyor_gateway_sse_streams") == 2
            async with notification_stream(api, as_="bob"):
                pass  # another principal has slots of its own

            notes.close()

            async def slot_free() -> bool | None:
                async with api.session.get(f"{api.base}/api/v1/notifications/stream", headers=api.auth()) as resp:
                    return True if resp.status == 200 else None

            await eventually(slot_free, within=5)
            job_events.close()
