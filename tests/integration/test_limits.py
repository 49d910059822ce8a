"""Per-type limits hold across worker processes, and make jobs wait, never fail.

The type here is defined the way a user adds one: a JobSpec (with limits) and a handler, nothing else.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter, defaultdict

from pydantic import Field

from shared.jobtypes import builtin_specs
from shared.jobtypes.spec import JobSpec, Limits, Payload, Queue, Registry, Result
from support.stack import Conn, Services, StartWorker, gateway_settings, running_gateway
from workers.context import JobContext
from workers.families import builtin_handlers
from workers.runtime import bind


class NapPayload(Payload):
    nap_s: float = Field(0.3, ge=0, le=5)


class NapResult(Result):
    attempt: int


def _nap_type(name: str, limits: Limits) -> tuple[Registry, dict[str, object]]:
    running: Counter[str] = Counter()
    peaks: defaultdict[str, int] = defaultdict(int)

    async def handle_nap(job: JobContext, payload: NapPayload) -> NapResult:
        running[job.owner] += 1
        peaks[job.owner] = max(peaks[job.owner], running[job.owner])
        try:
            await asyncio.sleep(payload.nap_s)
        finally:
            running[job.owner] -= 1
        return NapResult(attempt=job.attempt)

    spec = JobSpec(
        name=name, description="naps", queue=Queue.DEFAULT, payload_model=NapPayload, result_model=NapResult,
        limits=limits,
    )  # fmt: skip
    handlers = {**builtin_handlers(), name: bind(spec, handle_nap)}
    return Registry([*builtin_specs(), spec]), {"handlers": handlers, "peaks": peaks}


async def test_concurrency_per_owner_holds_across_two_workers(
    services: Services, pg: Conn, start_worker: StartWorker
) -> None:
    registry, parts = _nap_type("test.nap", Limits(concurrency_per_owner=2))
    for _ in range(2):
        await start_worker("default", handlers=parts["handlers"], registry=registry)
    async with running_gateway(gateway_settings(services), registry=registry) as api:
        jobs = [await api.submit("test.nap", {}, as_="alice") for _ in range(8)]
        bobs = [await api.submit("test.nap", {}, as_="bob") for _ in range(2)]

        done = [await api.wait_status(j["id"], "succeeded", within=30) for j in jobs]
        bob_done = [await api.wait_status(j["id"], "succeeded", as_="bob") for j in bobs]

    peaks = parts["peaks"]
    assert isinstance(peaks, dict)
    assert peaks["alice"] == 2, "never more than 2 of one owner's jobs at once, whichever worker runs them"
    assert all(j["attempts"] == 1 for j in [*done, *bob_done]), "waiting on a limit uses no attempt"
    assert max(j["finished_at"] for j in bob_done) < max(j["finished_at"] for j in done), "other owners do not wait"


async def test_per_second_limit_spreads_starts(services: Services, pg: Conn, start_worker: StartWorker) -> None:
    registry, parts = _nap_type("test.trickle", Limits(per_second=4))
    await start_worker("default", handlers=parts["handlers"], registry=registry)
    async with running_gateway(gateway_settings(services), registry=registry) as api:
        jobs = [await api.submit("test.trickle", {"nap_s": 0}) for _ in range(10)]
        done = [await api.wait_status(j["id"], "succeeded", within=30) for j in jobs]

    # 4 starts per one-second window: 10 jobs need three windows, so the starts span about a second or more
    # (unlimited, these instant jobs all start within a few milliseconds).
    starts = sorted(dt.datetime.fromisoformat(j["started_at"]) for j in done)
    assert (starts[-1] - starts[0]).total_seconds() > 0.9
    assert all(j["attempts"] == 1 for j in done)
