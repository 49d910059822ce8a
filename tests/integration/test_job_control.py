"""Cancel and retry: what never starts, what is interrupted, what starts again from attempt 1."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from support.helpers import eventually
from support.stack import Api, Conn, StartWorker


async def _sentinel_done(api: Api, **options: Any) -> None:
    """Submit a job on the default queue and wait for it to succeed: what the worker would have done with a
    job submitted (or due) before it, it has done by then."""
    sentinel = await api.submit("system.echo", {"data": "sentinel"}, **options)
    await api.wait_status(sentinel["id"], "succeeded")


async def test_cancelled_queued_job_never_starts(api: Api, start_worker: StartWorker, jobs_redis: Redis) -> None:
    job = await api.submit("system.echo", {"data": 1})

    status, cancelled, _ = await api.request("POST", f"/api/v1/jobs/{job['id']}/cancel")
    assert status == 200
    assert cancelled["status"] == "cancelled"
    assert cancelled["error"]["type"] == "JobCancelled"

    await start_worker("default")
    await _sentinel_done(api)  # submitted after it, on the same queue: the worker has been past it
    final = await api.job(job["id"])
    assert final["status"] == "cancelled"
    assert final["started_at"] is None
    assert await jobs_redis.zcard("conveyor:queue:default") == 0


async def test_cancelled_scheduled_job_never_starts(api: Api, start_worker: StartWorker) -> None:
    await start_worker("default")
    job = await api.submit("system.echo", {}, delay_s=0.5)

    status, _, _ = await api.request("POST", f"/api/v1/jobs/{job['id']}/cancel")
    await _sentinel_done(api, delay_s=0.6)  # due after it: once this one ran, its time had come and gone

    assert status == 200
    final = await api.job(job["id"])
    assert (final["status"], final["started_at"]) == ("cancelled", None)


async def test_cancel_interrupts_a_running_job_within_a_second(api: Api, start_worker: StartWorker) -> None:
    worker = await start_worker("default")
    job = await api.submit("system.echo", {"sleep_s": 30})
    await api.wait_status(job["id"], "running")

    status, body, _ = await api.request("POST", f"/api/v1/jobs/{job['id']}/cancel")
    assert (status, body["status"]) == (200, "cancelled")

    async def interrupted() -> bool | None:
        return True if b'outcome="cancelled",type="system.echo"} 1.0' in worker.metrics.render() else None

    await eventually(interrupted, within=1.0)
    await _sentinel_done(api)  # a job put back in the queue would have been ahead of this one
    final = await api.job(job["id"])
    assert final["status"] == "cancelled", "an interrupted job is not put back in the queue"
    assert final["finished_at"] is not None


async def test_cancel_of_a_finished_job_is_409(api: Api, start_worker: StartWorker) -> None:
    await start_worker("default")
    job = await api.submit("system.echo", {})
    await api.wait_status(job["id"], "succeeded")

    status, body, _ = await api.request("POST", f"/api/v1/jobs/{job['id']}/cancel")

    assert status == 409
    assert body["code"] == "conflict"


async def test_another_users_job_cannot_be_cancelled_or_retried(api: Api) -> None:
    job = await api.submit("system.echo", {}, as_="alice")

    for action in ("cancel", "retry"):
        status, _, _ = await api.request("POST", f"/api/v1/jobs/{job['id']}/{action}", as_="mallory")
        assert status == 404
    assert (await api.job(job["id"]))["status"] == "queued"


async def test_retry_of_a_failed_job_starts_its_attempts_again(api: Api, start_worker: StartWorker) -> None:
    await start_worker("default")
    job = await api.submit("system.echo", {"fail_times": 1}, max_attempts=1)
    await api.wait_status(job["id"], "failed")

    status, body, resp = await api.request("POST", f"/api/v1/jobs/{job['id']}/retry")
    assert status == 202
    assert (body["status"], body["attempts"], body["error"]) == ("queued", 0, None)
    assert resp.headers["Location"] == f"/api/v1/jobs/{job['id']}"

    # attempt 1 again, so `fail_times: 1` fails it again: the count really restarted
    failed_again = await api.wait_status(job["id"], "failed")
    assert failed_again["attempts"] == 1


async def test_retry_after_cancelling_a_running_job_is_not_hit_by_the_old_cancel(
    api: Api, start_worker: StartWorker
) -> None:
    await start_worker("default")
    job = await api.submit("system.echo", {"sleep_s": 0.8, "data": "second life"})
    await api.wait_status(job["id"], "running")
    await api.request("POST", f"/api/v1/jobs/{job['id']}/cancel")

    status, _, _ = await api.request("POST", f"/api/v1/jobs/{job['id']}/retry")
    assert status == 202

    done = await api.wait_status(job["id"], "succeeded", within=10)
    assert done["result"] == {"data": "second life", "attempt": 1}


async def test_retry_is_only_for_failed_or_cancelled_jobs(api: Api) -> None:
    job = await api.submit("system.echo", {})

    status, body, _ = await api.request("POST", f"/api/v1/jobs/{job['id']}/retry")

    assert status == 409
    assert "queued" in body["detail"]


async def test_cancel_still_interrupts_during_a_workers_shutdown_grace(api: Api, start_worker: StartWorker) -> None:
    worker = await start_worker("default", shutdown_grace_s=20)
    job = await api.submit("system.echo", {"sleep_s": 10})
    await api.wait_status(job["id"], "running")
    worker.stop()

    await api.request("POST", f"/api/v1/jobs/{job['id']}/cancel")

    async def interrupted() -> bool | None:
        return True if b'outcome="cancelled",type="system.echo"} 1.0' in worker.metrics.render() else None

    await eventually(interrupted, within=2.0)


async def test_cancelling_a_job_whose_worker_is_gone_leaves_no_marker(api: Api, jobs_redis: Redis, pg: Conn) -> None:
    job = await api.submit("system.echo", {})
    await pg.execute("UPDATE jobs SET status = 'running', attempts = 1 WHERE id = $1", job["id"])  # its worker died

    await api.request("POST", f"/api/v1/jobs/{job['id']}/cancel")

    assert await jobs_redis.zcard("arq:abort") == 0
    assert not await jobs_redis.exists(f"arq:job:{job['id']}")
