"""A worker's starts and successes are group-committed: the same answers as one row at a time, in few statements.

The grouped ledger writes are checked against the cases the single-row ones handle (a finished job, an older
generation, a stale run, the same job twice in one group); the runtime is then driven directly (as arq would
call it, without arq) over the real PostgreSQL and Redis, so the groups it forms can be counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from shared.core import json
from shared.core.json import utcnow
from shared.core.metrics import Metrics
from shared.core.settings import WorkerSettings
from shared.infra import broker, db, events, redis
from shared.infra.sealing import Sealer
from shared.jobtypes import builtin_registry
from shared.jobtypes.spec import JobSpec, Payload, Queue, Result
from shared.ledger import records
from shared.ledger.records import JobRecord, NewJob
from support.helpers import eventually
from support.stack import Conn, Services, worker_settings
from support.tcp_proxy import TcpProxy
from workers.context import JobContext, WorkerContext
from workers.families import builtin_handlers
from workers.families.email.sender import SmtpMailSender
from workers.runtime import AnyHandler, Runtime, bind


def new_job(job_type: str = "system.echo", payload: dict[str, Any] | None = None) -> NewJob:
    return NewJob(
        id=records.new_job_id(), type=job_type, queue="default", owner="alice", priority="normal",
        payload=payload or {}, max_attempts=3, timeout_s=30, scheduled_for=utcnow(), expires_at=None,
        idempotency_key=None, request_hash=None, request_id=None,
    )  # fmt: skip


async def insert(pool: db.Pool, count: int, job_type: str = "system.echo", **payload: Any) -> list[JobRecord]:
    return [(await records.insert_job(pool, new_job(job_type, payload)))[0] for _ in range(count)]


@contextlib.asynccontextmanager
async def ledger(services: Services) -> AsyncIterator[db.Pool]:
    async with db.open_pool(worker_settings(services).postgres) as pool:
        yield pool


async def test_grouped_starts_answer_as_single_starts_do(services: Services, pg: Conn) -> None:
    async with ledger(services) as pool:
        fresh, twice, finished, retried = await insert(pool, 4)
        await pg.execute("UPDATE jobs SET status = 'succeeded' WHERE id = $1", finished.id)
        await pg.execute("UPDATE jobs SET generation = 1 WHERE id = $1", retried.id)

        started = await records.mark_running_many(
            pool,
            [(fresh.id, 0), (twice.id, 0), (finished.id, 0), (retried.id, 0), (twice.id, 0), ("job_unknown", 0)],
        )

    assert [r is not None for r in started] == [True, True, False, False, False, False]
    assert [(r.id, r.status, r.attempts, r.run_seq) for r in started if r is not None] == [
        (fresh.id, "running", 1, 1),
        (twice.id, "running", 1, 1),
    ], "the same delivery twice in one group starts once"
    rows = {r["id"]: r for r in await pg.fetch("SELECT id, status, attempts, run_seq FROM jobs")}
    assert (rows[finished.id]["status"], rows[finished.id]["attempts"]) == ("succeeded", 0), "a finished job stays"
    assert (rows[retried.id]["status"], rows[retried.id]["attempts"]) == ("queued", 0), "an older generation is refused"


async def test_grouped_successes_are_fenced_as_single_ones_are(services: Services, pg: Conn) -> None:
    async with ledger(services) as pool:
        jobs = await insert(pool, 3)
        first = await records.mark_running_many(pool, [(j.id, 0) for j in jobs])
        runs = [r for r in first if r is not None]
        stale = runs[2]
        (newer,) = await records.mark_running_many(pool, [(stale.id, 0)])  # a second delivery took the job over
        assert newer is not None

        recorded = await records.mark_succeeded_many(
            pool,
            [
                (runs[0], {"data": {"n": 0}, "attempt": 1}),
                (runs[1], [1, "a list", None]),  # any JSON, not only an object
                (stale, {"data": "late", "attempt": 1}),
                (runs[0], {"data": "again", "attempt": 1}),
            ],
        )
        again = await records.mark_succeeded_many(pool, [(runs[1], {"data": "after the end"})])

    assert recorded == [True, True, False, False], "a stale run is fenced; the same outcome twice is recorded once"
    assert again == [False], "a finished job is not finished again"
    rows = {r["id"]: r for r in await pg.fetch("SELECT id, status, result, run_seq FROM jobs")}
    assert (rows[runs[0].id]["status"], rows[runs[0].id]["result"]) == ("succeeded", '{"data": {"n": 0}, "attempt": 1}')
    assert (rows[runs[1].id]["status"], rows[runs[1].id]["result"]) == ("succeeded", '[1, "a list", null]')
    assert (rows[stale.id]["status"], rows[stale.id]["run_seq"], rows[stale.id]["result"]) == ("running", 2, None)


@contextlib.asynccontextmanager
async def worker_context(settings: WorkerSettings) -> AsyncIterator[WorkerContext]:
    """The context a worker process builds, over the real services, for driving its Runtime directly."""
    async with (
        db.open_pool(settings.postgres) as pool,
        redis.open_cache(settings.redis) as cache,
        broker.open_jobs_redis(settings.redis) as jobs_redis,
        aiohttp.ClientSession() as http,
    ):
        with ThreadPoolExecutor(1) as cpu:
            ctx = WorkerContext(
                settings=settings, queue="default", pg=pool, cache=cache, jobs_redis=jobs_redis,
                mailer=SmtpMailSender(settings.smtp), metrics=Metrics(), registry=builtin_registry(), http=http,
                cpu=cpu, sealer=Sealer.from_config(settings.crypto),
            )  # fmt: skip
            try:
                yield ctx
            finally:
                await ctx.close()


async def run_all(runtime: Runtime, jobs: list[JobRecord]) -> list[dict[str, Any]]:
    """Every job delivered at once, as arq delivers a poll's worth of due jobs to a process."""
    return await asyncio.gather(*(runtime.run({}, broker.envelope(job)) for job in jobs))


async def statuses_heard(cache: Redis, job_ids: set[str], ready: asyncio.Event) -> dict[str, list[str]]:
    """The statuses announced on the jobs' channels, until each has reached its end (`ready`: listening).

    Pub/sub is one namespace for a whole Redis server, so other tests' jobs are heard too, and left out."""
    heard: dict[str, list[str]] = defaultdict(list)
    async with cache.pubsub(ignore_subscribe_messages=True) as pubsub:
        await pubsub.psubscribe(events.PATTERN)
        ready.set()
        while sum(heard[j][-1:] == ["succeeded"] for j in job_ids) < len(job_ids):
            message = await asyncio.wait_for(pubsub.get_message(timeout=5), 6)
            job_id = None if message is None else events.job_id_of(message["channel"].decode())
            if message is not None and job_id in job_ids:
                heard[job_id].append(json.loads(message["data"])["status"])
    return heard


async def test_a_crowd_of_jobs_is_started_finished_and_announced_in_a_few_round_trips(
    services: Services, pg: Conn, jobs_redis: Redis
) -> None:
    settings = worker_settings(services, max_jobs=50)
    async with worker_context(settings) as ctx:
        jobs = await insert(ctx.pg, 100, data="crowd")
        ready = asyncio.Event()
        listening = asyncio.create_task(statuses_heard(ctx.cache, {j.id for j in jobs}, ready))
        await asyncio.wait_for(ready.wait(), 5)
        done = await run_all(Runtime(ctx, builtin_handlers()), jobs)
        heard = await listening
        starts, successes, announced = ctx.outcomes.starts, ctx.outcomes.successes, ctx.announcements.statuses

    assert [d["status"] for d in done] == ["succeeded"] * 100
    assert (starts.items, successes.items, announced.items) == (100, 100, 200)
    # One at a time these are 200 statements; grouped, the starts of one delivery share a few and the successes,
    # which come back spread over the handlers' own round trips, a few dozen at most. Likewise the announcements.
    assert starts.groups <= 5, f"100 starts took {starts.groups} statements"
    assert successes.groups <= 40, f"100 successes took {successes.groups} statements"
    assert announced.groups <= 80, f"200 announcements took {announced.groups} round trips"
    assert heard == {j.id: ["running", "succeeded"] for j in jobs}, "each job's statuses, in the order reached"
    rows = await pg.fetch("SELECT status, attempts, result FROM jobs")
    assert {(r["status"], r["attempts"], r["result"]) for r in rows} == {
        ("succeeded", 1, '{"data": "crowd", "attempt": 1}')
    }


class GatePayload(Payload):
    pass


class GateResult(Result):
    attempt: int


def gated_type() -> tuple[Mapping[str, AnyHandler], asyncio.Event, asyncio.Event, int]:
    """`test.gated`: each attempt waits until the test opens the gate; `all_in` is set once `count` wait."""
    count = 12
    gate, all_in = asyncio.Event(), asyncio.Event()
    waiting = 0

    async def handle(job: JobContext, payload: GatePayload) -> GateResult:
        nonlocal waiting
        waiting += 1
        if waiting == count:
            all_in.set()
        await gate.wait()
        return GateResult(attempt=job.attempt)

    spec = JobSpec(
        name="test.gated", description="waits for the test", queue=Queue.DEFAULT, payload_model=GatePayload,
        result_model=GateResult,
    )  # fmt: skip
    return {**builtin_handlers(), spec.name: bind(spec, handle)}, gate, all_in, count


async def test_a_ledger_outage_during_a_group_retries_every_job_of_it(
    services: Services, pg: Conn, jobs_redis: Redis, pg_proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    handlers, gate, all_in, count = gated_type()
    settings = worker_settings(services.through_postgres_port(pg_proxy.port))
    caplog.set_level(logging.WARNING, logger="workers.runtime")

    async def every_write_retried() -> bool | None:
        retries = sum(r.getMessage() == "job.outcome_write_retry" for r in caplog.records)
        return True if retries >= count else None

    async with worker_context(settings) as ctx:
        jobs = await insert(ctx.pg, count, "test.gated")
        running = asyncio.create_task(run_all(Runtime(ctx, handlers), jobs))
        await asyncio.wait_for(all_in.wait(), 10)  # every start recorded, every handler in
        pg_proxy.cut()
        gate.set()  # every handler finishes while the ledger is away
        await eventually(every_write_retried)
        pg_proxy.restore()
        done = await asyncio.wait_for(running, 20)
        successes = ctx.outcomes.successes

    assert [d["status"] for d in done] == ["succeeded"] * count
    assert successes.groups < successes.items, "the outcomes went in groups"
    rows = await pg.fetch("SELECT status, attempts, run_seq, result FROM jobs")
    assert {(r["status"], r["attempts"], r["run_seq"], r["result"]) for r in rows} == {
        ("succeeded", 1, 1, '{"attempt": 1}')
    }, "every job of the failed group was written once the ledger was back; none ran again"
    assert len(rows) == count


async def test_a_shutdown_while_its_start_is_written_gives_the_attempt_back(
    services: Services, pg: Conn, jobs_redis: Redis
) -> None:
    """The start's group is written even though the job was cancelled (a worker's shutdown) while it waited, so
    the attempt it recorded is given back: the job waits in the queue again with none used."""
    async with worker_context(worker_settings(services)) as ctx:
        (job,) = await insert(ctx.pg, 1, data="cut short")
        async with pg.transaction():
            await pg.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job.id)  # holds the start's group back
            run = asyncio.create_task(Runtime(ctx, builtin_handlers()).run({}, broker.envelope(job)))

            async def start_waiting() -> bool | None:
                await pg.execute("SELECT pg_stat_clear_snapshot()")
                waiting = await pg.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND query LIKE '%status = ''running''%'"
                )
                return True if waiting else None

            await eventually(start_waiting)
            run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    row = await pg.fetchrow("SELECT status, attempts, run_seq FROM jobs WHERE id = $1", job.id)
    assert row is not None
    assert (row["status"], row["attempts"], row["run_seq"]) == ("queued", 0, 1)
