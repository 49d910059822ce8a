"""Progress in the job resource, and the live event stream fed by Redis pub/sub."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from gateway.keys import EVENT_HUB
from shared.core import json
from support.helpers import eventually
from support.stack import Api, Conn, Services, StartWorker, gateway_settings, running_gateway


async def _events(
    api: Api, job_id: str, *, as_: str = "alice", limit: int = 200, listening: asyncio.Event | None = None
) -> list[tuple[str, Any]]:
    """Read a job's stream to its end: (event, data) pairs, and ("comment", text) for heartbeats.

    `listening` is set at the first event: the stream sends the job once it listens for its changes.
    """
    seen: list[tuple[str, Any]] = []
    async with api.session.get(f"{api.base}/api/v1/jobs/{job_id}/events", headers=api.auth(as_)) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        event = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                seen.append(("comment", line))
            elif line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                seen.append((event, json.loads(line.removeprefix("data: "))))
                if listening is not None:
                    listening.set()
                if event == "end" or len(seen) >= limit:
                    break
    return seen


async def test_running_job_shows_its_progress(api: Api, start_worker: StartWorker) -> None:
    await start_worker("default")
    job = await api.submit("system.echo", {"sleep_s": 3})

    async def with_progress() -> dict[str, Any] | None:
        current = await api.job(job["id"])
        return current if current["progress"] and current["progress"]["percent"] > 0 else None

    running = await eventually(with_progress, within=5)
    assert running["status"] == "running"
    assert running["progress"]["step"] == "sleeping"
    assert 0 < running["progress"]["percent"] < 100


async def test_stream_follows_a_job_to_its_end(api: Api, start_worker: StartWorker) -> None:
    job = await api.submit("system.echo", {"sleep_s": 1, "data": "streamed"})
    listening = asyncio.Event()
    reading = asyncio.create_task(_events(api, job["id"], listening=listening))
    await asyncio.wait_for(listening.wait(), timeout=5)  # the first event: every change from now on is sent
    await start_worker("default")

    seen = await asyncio.wait_for(reading, timeout=15)

    kinds = [kind for kind, _ in seen if kind != "comment"]
    statuses = [data["status"] for kind, data in seen if kind == "job"]
    assert kinds[0] == "job"
    assert statuses[0] == "queued"
    assert "running" in statuses
    assert any(data["progress"] for kind, data in seen if kind == "job"), "progress arrives on the stream"
    assert statuses[-1] == "succeeded"
    assert seen[-1] == ("end", {"id": job["id"], "status": "succeeded"})
    last_job = next(data for kind, data in reversed(seen) if kind == "job")
    assert last_job["result"] == {"data": "streamed", "attempt": 1}


async def test_stream_of_a_finished_job_ends_at_once(api: Api, start_worker: StartWorker) -> None:
    await start_worker("default")
    job = await api.submit("system.echo", {})
    await api.wait_status(job["id"], "succeeded")

    seen = await asyncio.wait_for(_events(api, job["id"]), timeout=5)

    assert [kind for kind, _ in seen] == ["job", "end"]


async def test_stream_of_another_users_job_is_404(api: Api) -> None:
    job = await api.submit("system.echo", {}, as_="alice")

    async with api.session.get(f"{api.base}/api/v1/jobs/{job['id']}/events", headers=api.auth("mallory")) as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"


async def test_stream_sends_heartbeats_and_frees_a_departed_client(services: Services, pg: Conn) -> None:
    async with running_gateway(gateway_settings(services, sse_heartbeat_s=0.1)) as api:
        job = await api.submit("system.echo", {})
        hub = api.app[EVENT_HUB]
        async with aiohttp.ClientSession() as client:
            resp = await client.get(f"{api.base}/api/v1/jobs/{job['id']}/events", headers=api.auth())
            lines = [await resp.content.readline() for _ in range(6)]
            assert b": keepalive\n" in lines
            assert hub.listeners == 1
            resp.close()

        async def freed() -> bool | None:
            return True if hub.listeners == 0 else None

        await eventually(freed, within=3)
