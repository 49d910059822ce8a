"""End to end: jobs POSTed while the worker runs, from the HTTP request to `succeeded` in the ledger, for a
sustained stretch; the RSS of the gateway and every worker after the warm-up and at the end (memory flat)."""

from __future__ import annotations

import asyncio
import time

from conveyor_client import Client, ledger_span_s, post_job, truncate_jobs, wait_rows
from harness import Figures, rate, rss_mb, timed_loop

WARM_UP_FRACTION = 0.1  # RSS is first sampled this far into the stretch (caches, pools and buffers grown)


def rss_by_process(c: Client) -> dict[str, float]:
    """RSS (MB) of the gateway and of each running worker, named by role: gateway, worker1, worker2, …"""
    rss = {} if c.stack.gateway is None else {"gateway": rss_mb(c.stack.gateway.pid)}
    return rss | {f"worker{n}": rss_mb(p.pid) for n, p in enumerate(c.stack.workers, start=1)}


async def sustained(c: Client, seconds: float) -> tuple[Figures, dict[str, float], dict[str, float]]:
    """POST `system.echo` jobs for `seconds` (64 in flight) while the running workers drain them.

    Rate from the ledger (first insert -> last finish, so a worker falling behind counts); RSS per process
    after the warm-up and at the end.
    """
    await truncate_jobs(c)
    before: dict[str, float] = {}

    async def sample_after_warm_up() -> None:
        await asyncio.sleep(seconds * WARM_UP_FRACTION)
        before.update(rss_by_process(c))

    sampler = asyncio.create_task(sample_after_warm_up())
    started = time.perf_counter()

    async def call(i: int) -> bool:
        return await post_job(c, i) is not None

    load = await timed_loop(seconds, c.cfg.concurrency, call)
    await sampler
    done = await wait_rows(c, "status = 'succeeded'", load.ok)
    after = rss_by_process(c)
    figures = {
        "e2e_rate": rate(done, await ledger_span_s(c, "created_at", "finished_at")),
        "e2e_post_rate": rate(load.ok, load.elapsed_s),
        "e2e_s": time.perf_counter() - started,
    }
    return figures, before, after


async def e2e_phase(c: Client) -> Figures:
    """The end-to-end stretch of `e2e_s` seconds, on the worker the drain phase started."""
    figures, before, after = await sustained(c, c.cfg.e2e_s)
    growth = max(after[name] / before[name] for name in before)
    return {**figures, "e2e_rss_ratio": growth}


async def soak_phase(c: Client) -> tuple[Figures, dict[str, float], dict[str, float]]:
    """The soak: `soak_s` seconds of end-to-end load on one fresh worker; RSS before/after per process."""
    c.stack.start_workers(1)
    try:
        await c.stack.workers_ready()
        figures, before, after = await sustained(c, c.cfg.soak_s)
    finally:
        c.stack.stop_workers()
    ratio = max(after[name] / before[name] for name in before)
    return {"soak_rate": figures["e2e_rate"], "soak_rss_ratio": ratio}, before, after
