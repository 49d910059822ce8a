"""Fair share at pickup: an owner under its share takes the next slot that frees, however long another owner's
backlog of high-priority jobs is, and however recently the worker filled its slots from that backlog."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from redis.asyncio import Redis

from shared.infra import fair_share
from shared.jobtypes import builtin_specs
from shared.jobtypes.spec import JobSpec, Payload, Queue, Registry, Result
from support.helpers import eventually
from support.stack import Conn, Services, StartWorker, gateway_settings, running_gateway
from workers.context import JobContext
from workers.families import builtin_handlers
from workers.runtime import bind

SLOTS = 2


class TurnPayload(Payload):
    pass


class TurnResult(Result):
    pass


def _turnstile() -> tuple[Registry, dict[str, Any], asyncio.Semaphore]:
    """A type whose jobs each end only when the test lets one through: the test decides when a slot frees."""
    turns = asyncio.Semaphore(0)

    async def handle(job: JobContext, payload: TurnPayload) -> TurnResult:
        await turns.acquire()
        return TurnResult()

    spec = JobSpec(
        name="test.turn", description="ends when let through", queue=Queue.DEFAULT,
        payload_model=TurnPayload, result_model=TurnResult,
    )  # fmt: skip
    return Registry([*builtin_specs(), spec]), {**builtin_handlers(), spec.name: bind(spec, handle)}, turns


async def _running(pg: Conn, owner: str) -> bool | None:
    count = await pg.fetchval("SELECT count(*) FROM jobs WHERE owner = $1 AND status = 'running'", owner)
    return True if count == SLOTS else None


async def _started(pg: Conn) -> int:
    return int(await pg.fetchval("SELECT count(*) FROM jobs WHERE started_at IS NOT NULL"))


async def _more_started(pg: Conn, than: int) -> bool | None:
    return True if await _started(pg) > than else None


async def _limited(jobs_redis: Redis, owner: str) -> bool | None:
    """Whether the published shares let `owner` start no more jobs (another owner waits under its share)."""
    async with jobs_redis.pipeline(transaction=False) as pipe:
        pipe.hget(fair_share.share_key(Queue.DEFAULT.value), fair_share.owner_field(owner))
        (left,) = await pipe.execute()
    return True if left is not None and int(left) == 0 else None


async def test_an_owner_under_its_share_starts_at_the_next_freed_slot_behind_another_owners_backlog(
    services: Services, pg: Conn, jobs_redis: Redis, start_worker: StartWorker
) -> None:
    registry, handlers, turns = _turnstile()
    await start_worker("default", max_jobs=SLOTS, handlers=handlers, registry=registry)
    async with running_gateway(gateway_settings(services), registry=registry) as api:
        backlog = [await api.submit("test.turn", {}, priority="high", as_="alice") for _ in range(4 * SLOTS)]
        await eventually(lambda: _running(pg, "alice"))  # alone, alice uses every slot

        first = await api.submit("system.echo", {}, as_="bob")
        await eventually(lambda: _limited(jobs_redis, "alice"))
        turns.release()  # one of alice's jobs ends: bob's takes its slot
        await api.wait_status(first["id"], "succeeded", as_="bob")
        # Bob's job ended at once; nothing else of bob's waits, so alice's backlog fills that slot again.
        await eventually(lambda: _running(pg, "alice"))

        second = await api.submit("system.echo", {}, as_="bob")
        await eventually(lambda: _limited(jobs_redis, "alice"))
        started = await _started(pg)
        turns.release()  # the next freed slot: bob's, not alice's
        await eventually(lambda: _more_started(pg, started))
        for _ in backlog:
            turns.release()
        done = await api.wait_status(second["id"], "succeeded", as_="bob")
        alices = [await api.wait_status(job["id"], "succeeded") for job in backlog]

    def at(job: dict[str, Any], field: str) -> dt.datetime:
        return dt.datetime.fromisoformat(job[field])

    after = sorted(
        [done, *(job for job in alices if at(job, "started_at") > at(second, "created_at"))],
        key=lambda job: at(job, "started_at"),
    )
    assert after[0]["id"] == second["id"], "the freed slot went to alice's backlog while bob's job waited"
    assert len(after) > 1, "alice's backlog was not behind bob's job"
