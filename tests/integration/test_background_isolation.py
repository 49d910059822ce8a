"""One owner's bad item never stalls a background pass for everyone: the reconciler, retention and schedule
firing each log, count and skip it, and go on with every other owner's work."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from redis.asyncio import Redis

from support.helpers import eventually
from support.stack import Api, Conn, StartWorker
from workers.processes import WorkerProcess


def _echo(data: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "system.echo", "payload": {"data": data}, **extra}


def _failures(worker: WorkerProcess, loop: str) -> float:
    found = re.search(
        rf'conveyor_worker_background_item_failures_total\{{loop="{loop}"\}} ([0-9.]+)',
        worker.metrics.render().decode(),
    )
    return float(found[1]) if found else 0.0


async def _finished_batch(api: Api, pg: Conn, **on_complete: Any) -> str:
    """An alice batch whose only member finished while nobody completed it (left to the reconciler)."""
    status, batch, _ = await api.request(
        "POST", "/api/v1/batches", json={"jobs": [_echo(1)], "on_complete": _echo("done", **on_complete)}
    )
    assert status == 202, batch
    await pg.execute("UPDATE jobs SET status = 'succeeded', finished_at = now() WHERE batch_id = $1", batch["id"])
    await pg.execute("UPDATE batches SET created_at = now() - interval '1 minute' WHERE id = $1", batch["id"])
    batch_id: str = batch["id"]
    return batch_id


async def test_an_on_complete_takes_no_idempotency_key(api: Api, pg: Conn) -> None:
    status, body, _ = await api.request(
        "POST", "/api/v1/batches", json={"jobs": [_echo(1)], "on_complete": _echo("x", idempotency_key="k")}
    )

    assert status == 422, body
    assert body["errors"][0]["loc"] == ["on_complete", "idempotency_key"]
    assert await pg.fetchval("SELECT count(*) FROM batches") == 0


async def test_bad_batches_do_not_keep_the_reconciler_from_another_owners_lost_job(
    api: Api, start_worker: StartWorker, pg: Conn, jobs_redis: Redis
) -> None:
    # Stored before on_complete refused keys: alice's on_complete reuses the key of another job of hers.
    used = await api.submit("system.echo", {"data": "other"}, idempotency_key="k1", delay_s=3600)
    keyed = await _finished_batch(api, pg)
    await pg.execute(
        'UPDATE batches SET on_complete = on_complete || \'{"idempotency_key": "k1"}\'::jsonb WHERE id = $1', keyed
    )
    # And a stored request no code path expects.
    corrupt = await _finished_batch(api, pg)
    await pg.execute("UPDATE batches SET on_complete = '\"not a request\"'::jsonb WHERE id = $1", corrupt)
    bobs = await api.submit("system.echo", {"data": "bob"}, as_="bob")
    await jobs_redis.flushdb()  # Redis lost bob's job

    scheduler = await start_worker("scheduler")
    await start_worker("default")

    done = await api.wait_status(bobs["id"], "succeeded", as_="bob")
    assert done["attempts"] == 1
    assert _failures(scheduler, "reconciler") >= 1  # the corrupt batch: logged, counted, skipped

    async def completed() -> str | None:
        _, view, _ = await api.request("GET", f"/api/v1/batches/{keyed}")
        job_id: str | None = view["on_complete_job_id"]
        return job_id

    on_complete = await api.wait_status(await eventually(completed), "succeeded")
    assert on_complete["id"] != used["id"]
    assert on_complete["idempotency_key"] is None  # the stale key is dropped, not the follow-up
    assert await pg.fetchval("SELECT completed_at FROM batches WHERE id = $1", corrupt) is None  # tried again later


async def test_a_job_retention_cannot_delete_does_not_keep_the_others(
    api: Api, start_worker: StartWorker, pg: Conn
) -> None:
    for owner in ("alice", "mallory", "bob"):
        await api.submit("system.echo", {"data": owner}, as_=owner)
    await pg.execute("UPDATE jobs SET status = 'succeeded', finished_at = now() - interval '30 days'")
    # mallory's row refuses to go (as a row some other table still needs would).
    await pg.execute(
        "CREATE FUNCTION conveyor_test_keep_row() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'kept by the test'; END $$"
    )
    await pg.execute(
        "CREATE TRIGGER conveyor_test_keep BEFORE DELETE ON jobs FOR EACH ROW WHEN (OLD.owner = 'mallory')"
        " EXECUTE FUNCTION conveyor_test_keep_row()"
    )
    try:
        scheduler = await start_worker("scheduler")

        async def purged() -> bool | None:
            return True if await pg.fetchval("SELECT count(*) FROM jobs") == 1 else None

        await eventually(purged)
        assert await pg.fetchval("SELECT owner FROM jobs") == "mallory"
        assert _failures(scheduler, "retention") >= 1
    finally:
        await pg.execute("DROP TRIGGER conveyor_test_keep ON jobs")
        await pg.execute("DROP FUNCTION conveyor_test_keep_row()")


async def test_a_schedule_whose_fire_raises_does_not_keep_the_others_from_firing(
    api: Api, start_worker: StartWorker, pg: Conn
) -> None:
    ids = {}
    for owner in ("mallory", "bob"):
        status, schedule, _ = await api.request(
            "POST", "/api/v1/schedules", as_=owner, json={"name": "n", "cron": "0 0 1 1 *", "job": _echo(owner)}
        )
        assert status == 201, schedule
        ids[owner] = schedule["id"]
    await pg.execute("UPDATE schedules SET next_run_at = now() - interval '1 second'")
    # mallory's is first due, and its stored cron no longer parses.
    await pg.execute(
        "UPDATE schedules SET cron = 'not a cron', next_run_at = now() - interval '1 minute' WHERE id = $1",
        ids["mallory"],
    )

    scheduler = await start_worker("scheduler")
    await start_worker("default")

    async def fired() -> str | None:
        _, current, _ = await api.request("GET", f"/api/v1/schedules/{ids['bob']}", as_="bob")
        job_id: str | None = current["last_job_id"]
        return job_id

    await api.wait_status(await eventually(fired), "succeeded", as_="bob")
    _, bad, _ = await api.request("GET", f"/api/v1/schedules/{ids['mallory']}", as_="mallory")
    assert bad["last_skip_reason"] == "error"
    assert dt.datetime.fromisoformat(bad["next_run_at"]) > dt.datetime.now(dt.UTC)  # tried later, not first again
    assert _failures(scheduler, "schedules") >= 1
    assert await pg.fetchval("SELECT count(*) FROM jobs WHERE owner = 'mallory'") == 0
