"""Fair share of a queue's worker slots: a flood of one owner's high-priority jobs does not starve another
owner; one owner alone still uses every slot; priority orders an owner's jobs within its share."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from shared.jobtypes import builtin_specs
from shared.jobtypes.spec import JobSpec, Limits, Payload, Queue, Registry, Result
from support.helpers import eventually
from support.stack import Api, Conn, Services, StartWorker, gateway_settings, running_gateway
from workers.context import JobContext
from workers.families import builtin_handlers
from workers.runtime import bind

LONG_S = 1.5  # long enough that the other owner's job arrives while the first ones run


async def _running(pg: Conn, owner: str) -> int:
    return int(await pg.fetchval("SELECT count(*) FROM jobs WHERE owner = $1 AND status = 'running'", owner))


async def _succeeded(pg: Conn, owner: str) -> int:
    return int(await pg.fetchval("SELECT count(*) FROM jobs WHERE owner = $1 AND status = 'succeeded'", owner))


async def _queued(pg: Conn, owner: str) -> int:
    return int(await pg.fetchval("SELECT count(*) FROM jobs WHERE owner = $1 AND status = 'queued'", owner))


async def _holds(pg: Conn, owner: str, running: int) -> bool | None:
    return True if await _running(pg, owner) == running else None


async def test_another_owner_starts_while_a_high_priority_flood_waits(
    api: Api, pg: Conn, start_worker: StartWorker
) -> None:
    await start_worker("default", max_jobs=4)
    flood = [await api.submit("system.echo", {"sleep_s": LONG_S}, priority="high", as_="alice") for _ in range(12)]
    await eventually(lambda: _holds(pg, "alice", 4))  # alone, alice uses every slot

    mail = await api.submit("system.echo", {"data": "mail"}, as_="bob")
    done = await api.wait_status(mail["id"], "succeeded", as_="bob")

    alice = [await api.job(j["id"]) for j in flood]
    started_before = [j for j in alice if j["started_at"] is not None and j["started_at"] < done["started_at"]]
    assert len(started_before) == 4, "no job of alice's backlog started while bob's job waited"
    assert [j for j in alice if j["started_at"] is None], "bob did not wait for alice's backlog"
    assert all(j["attempts"] <= 1 for j in alice), "held jobs use no attempt"


async def test_one_owner_alone_uses_every_slot_of_every_worker(api: Api, pg: Conn, start_worker: StartWorker) -> None:
    for _ in range(2):
        await start_worker("default", max_jobs=2)
    for _ in range(12):
        await api.submit("system.echo", {"sleep_s": 1.0}, priority="high", as_="alice")
    await eventually(lambda: _holds(pg, "alice", 4))

    other = await api.submit("system.echo", {}, as_="bob")
    await api.wait_status(other["id"], "succeeded", as_="bob")

    async def alone_again() -> bool | None:
        return True if await _running(pg, "alice") == 4 and await _queued(pg, "alice") > 0 else None

    # Bob took a slot between alice's jobs; once he no longer waits, alice has every slot again.
    await eventually(alone_again)


async def test_priority_orders_an_owners_jobs_within_its_share(api: Api, pg: Conn, start_worker: StartWorker) -> None:
    await start_worker("default", max_jobs=1)
    bobs = [await api.submit("system.echo", {"sleep_s": 0.6}, as_="bob") for _ in range(3)]
    await eventually(lambda: _holds(pg, "bob", 1))
    alices = [
        await api.submit("system.echo", {"sleep_s": 0.6}, priority=p, as_="alice") for p in ("low", "normal", "high")
    ]

    done: list[dict[str, Any]] = [await api.wait_status(j["id"], "succeeded", as_="bob") for j in bobs]
    done += [await api.wait_status(j["id"], "succeeded", within=20) for j in alices]

    by_start = sorted(done, key=lambda j: j["started_at"])
    assert [j["owner"] for j in by_start] == ["bob", "alice"] * 3, "one slot, two owners: they take turns"
    assert [j["priority"] for j in by_start if j["owner"] == "alice"] == ["high", "normal", "low"]


class NapPayload(Payload):
    nap_s: float = Field(0.3, ge=0, le=10)


class NapResult(Result):
    napped_s: float


def _one_at_a_time() -> tuple[Registry, dict[str, Any]]:
    """A type a user might add: one job of it per owner at a time."""

    async def handle(job: JobContext, payload: NapPayload) -> NapResult:
        await asyncio.sleep(payload.nap_s)
        return NapResult(napped_s=payload.nap_s)

    spec = JobSpec(
        name="test.solo", description="naps, one per owner at a time", queue=Queue.DEFAULT,
        payload_model=NapPayload, result_model=NapResult, limits=Limits(concurrency_per_owner=1),
    )  # fmt: skip
    return Registry([*builtin_specs(), spec]), {**builtin_handlers(), spec.name: bind(spec, handle)}


async def test_jobs_held_by_their_own_limit_hold_back_no_other_owner(
    services: Services, pg: Conn, start_worker: StartWorker
) -> None:
    registry, handlers = _one_at_a_time()
    await start_worker("default", max_jobs=4, handlers=handlers, registry=registry)
    async with running_gateway(gateway_settings(services), registry=registry) as api:
        for _ in range(4):
            await api.submit("test.solo", {"nap_s": 8}, as_="alice")
        await eventually(lambda: _holds(pg, "alice", 1))  # one runs; the others wait on the type's limit
        bobs = [await api.submit("system.echo", {"sleep_s": 0.4}, as_="bob") for _ in range(15)]

        async def every_other_slot_after_a_while() -> bool | None:
            return True if await _succeeded(pg, "bob") >= 3 and await _running(pg, "bob") == 3 else None

        # Alice's waiting jobs could not run if given a slot: bob keeps every slot her running job leaves.
        await eventually(every_other_slot_after_a_while, within=6, interval=0.02)
        for job in bobs:
            await api.wait_status(job["id"], "succeeded", as_="bob")
