"""Priorities: among ready jobs of a queue, high starts first, then normal, then low; delays still hold."""

from __future__ import annotations

import datetime as dt

from redis.asyncio import Redis

from shared.infra import broker
from support.stack import Api, StartWorker

ADMIN = {"as_": "root", "role": "admin"}


async def test_high_starts_first_then_normal_then_low(api: Api, start_worker: StartWorker) -> None:
    await api.request("POST", "/api/v1/queues/default/pause", **ADMIN)
    order = ["normal", "low", "high", "normal", "high"]
    jobs = [await api.submit("system.echo", {"data": i}, priority=p) for i, p in enumerate(order)]
    await start_worker("default", max_jobs=1)

    await api.request("POST", "/api/v1/queues/default/resume", **ADMIN)
    done = [await api.wait_status(job["id"], "succeeded") for job in jobs]

    by_start = sorted(done, key=lambda j: j["started_at"])
    assert [j["priority"] for j in by_start] == ["high", "high", "normal", "normal", "low"]
    assert [j["result"]["data"] for j in by_start] == [2, 4, 0, 3, 1], "first come, first served within a priority"


async def test_a_delayed_high_priority_job_waits_for_its_time(api: Api, start_worker: StartWorker) -> None:
    await start_worker("default")
    later = await api.submit("system.echo", {}, priority="high", delay_s=1.5)
    now = await api.submit("system.echo", {}, priority="low")

    first = await api.wait_status(now["id"], "succeeded")
    second = await api.wait_status(later["id"], "succeeded")

    assert dt.datetime.fromisoformat(second["started_at"]) >= dt.datetime.fromisoformat(later["scheduled_for"])
    assert second["started_at"] > first["started_at"]


async def test_a_retried_high_priority_job_stays_in_its_band(
    api: Api, start_worker: StartWorker, jobs_redis: Redis
) -> None:
    await start_worker("default")
    job = await api.submit("system.echo", {"fail_times": 1}, priority="high", max_attempts=3)

    retrying = await api.wait_status(job["id"], "retrying")
    score = await jobs_redis.zscore("conveyor:queue:default", job["id"])

    assert score is not None
    due_ms = dt.datetime.fromisoformat(retrying["scheduled_for"]).timestamp() * 1000
    assert abs(score - (due_ms - broker.PRIORITY_BANDS["high"])) < 1000, "back in the high band, at its due time"
    await api.wait_status(job["id"], "succeeded")
