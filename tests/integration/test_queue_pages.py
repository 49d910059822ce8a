"""The bulk operations on a queue (clean, retry-failed) go a page of jobs at a time, and a page boundary
changes nothing a caller sees: every job is cleaned or retried, and the per-owner cap holds across pages."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from shared.core.settings import SecurityConfig
from shared.ledger import queue_state
from support.stack import Api, Conn, Services, StartWorker, gateway_settings, running_gateway

ADMIN = {"as_": "root", "role": "admin"}


async def _fail(pg: Conn, job_id: str, *, minutes_ago: int) -> None:
    await pg.execute(
        "UPDATE jobs SET status = 'failed', attempts = 5, finished_at = now() - make_interval(mins => $2)"
        " WHERE id = $1",
        job_id,
        minutes_ago,
    )


async def test_retry_failed_over_many_pages_keeps_each_owners_cap_oldest_failure_first(
    services: Services, pg: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_state, "RETRY_PAGE", 2)
    security = SecurityConfig(max_queued_per_owner=3)
    async with running_gateway(gateway_settings(services, security=security)) as api:
        alice: list[str] = []
        for minutes_ago in (60, 59, 57, 56, 55):  # five failed jobs, oldest first
            alice.append((await api.submit("system.echo", {}, as_="alice"))["id"])
            await _fail(pg, alice[-1], minutes_ago=minutes_ago)
        bob = (await api.submit("system.echo", {}, as_="bob"))["id"]
        await _fail(pg, bob, minutes_ago=58)  # between alice's: her jobs span every page
        await api.submit("system.echo", {"data": "waiting"}, as_="alice", delay_s=3600)  # alice's room: 2

        status, body, _ = await api.request("POST", "/api/v1/queues/default/retry-failed", **ADMIN)

        assert (status, body) == (200, {"retried": 3, "skipped": 3})
        queued = await pg.fetch("SELECT id FROM jobs WHERE status = 'queued' ORDER BY id")
        assert {r["id"] for r in queued} == {alice[0], alice[1], bob}  # her two oldest failures, and bob's
        assert await pg.fetchval("SELECT count(*) FROM jobs WHERE status = 'failed'") == 3


async def test_clean_over_many_pages_removes_every_job_and_its_result(
    api: Api, start_worker: StartWorker, pg: Conn, jobs_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_state, "CLEAN_PAGE", 2)
    await start_worker("default")
    jobs = [await api.submit("system.echo", {"data": i}) for i in range(6)]
    for job in jobs:
        await api.wait_status(job["id"], "succeeded")
    old, recent = jobs[:5], jobs[5]
    await pg.execute(
        "UPDATE jobs SET finished_at = now() - interval '2 hours' WHERE id = ANY($1::text[])", [j["id"] for j in old]
    )

    status, body, _ = await api.request("POST", "/api/v1/queues/default/clean", json={"older_than_s": 3600}, **ADMIN)

    assert (status, body) == (200, {"removed": 5})
    assert await pg.fetchval("SELECT array_agg(id) FROM jobs") == [recent["id"]]
    for job in old:
        assert not await jobs_redis.exists(f"arq:result:{job['id']}")
    assert await jobs_redis.exists(f"arq:result:{recent['id']}")
