"""The baselines: stock arq (default worker, asyncio) and tuned arq (max_jobs 100, poll_delay 10 ms, under
uvloop) on the same Redis, with arq's own client: a burst drain and, for stock arq, pickup latency."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any, Final

from arq.connections import RedisSettings, create_pool
from arq.worker import Worker, func
from harness import Config, Figures, Load, flush_redis, percentile, rate, redis_costs, redis_snap
from redis.asyncio import Redis

ARQ_POLL_S: Final = 0.5  # stock arq's poll_delay: its pickup samples are spread uniformly over one period
TUNED_ARQ: Final = {"max_jobs": 100, "poll_delay": 0.01}  # "arq tuned", run under uvloop
ENQUEUE_GATHER: Final = 100  # arq's client baseline: enqueue_job calls in one asyncio.gather (no HTTP, no ledger)


async def noop(ctx: dict[str, Any]) -> None:
    pass


async def stamp(ctx: dict[str, Any], enqueued_at: float) -> None:
    """Pickup probe: the handler's start, relative to the perf_counter taken just before enqueue_job."""
    ctx["started"].put_nowait(time.perf_counter() - enqueued_at)


async def arq_drain(cfg: Config, n: int, **worker_options: Any) -> Figures:
    """Enqueue `n` no-op jobs with arq's own client, then time a burst worker draining them."""
    await flush_redis(cfg)
    settings = RedisSettings.from_dsn(cfg.jobs_url)
    probe = Redis.from_url(cfg.jobs_url)
    worker = Worker([noop], redis_settings=settings, burst=True, handle_signals=False, **worker_options)
    try:
        before = await redis_snap(probe)
        enqueued = await arq_enqueue(settings, n)
        cpu0, t0 = time.process_time(), time.perf_counter()
        await worker.async_run()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await worker.close()
        after = await redis_snap(probe)
    finally:
        await worker.close()  # idempotent
        await probe.aclose()
    done = worker.jobs_complete
    return {
        **enqueued.figures("enqueue"),
        "drain_rate": rate(done, elapsed),
        "worker_cpu_ms_per_job": cpu * 1000 / max(done, 1),
        **redis_costs(before, after, max(done, 1)),
    }


async def arq_enqueue(settings: RedisSettings, n: int) -> Load:
    """arq's own client as its users batch it: `n` enqueue_job calls, gathered ENQUEUE_GATHER at a time."""
    pool = await create_pool(settings)
    latencies: list[float] = []

    async def call() -> bool:
        started = time.perf_counter()
        queued = await pool.enqueue_job("noop") is not None
        latencies.append(time.perf_counter() - started)
        return queued

    try:
        started, ok = time.perf_counter(), 0
        for first in range(0, n, ENQUEUE_GATHER):
            ok += sum(await asyncio.gather(*(call() for _ in range(min(ENQUEUE_GATHER, n - first)))))
        return Load(n, ok, time.perf_counter() - started, latencies)
    finally:
        await pool.aclose(close_connection_pool=True)


async def arq_pickup(cfg: Config, samples: int) -> Figures:
    """One job at a time on an idle default worker: enqueue_job call -> handler start (perf_counter)."""
    await flush_redis(cfg)
    settings = RedisSettings.from_dsn(cfg.jobs_url)
    started: asyncio.Queue[float] = asyncio.Queue()
    worker = Worker(
        [func(stamp, name="stamp")], redis_settings=settings, handle_signals=False, ctx={"started": started}
    )
    task = asyncio.create_task(worker.async_run())
    pool = await create_pool(settings)
    latencies: list[float] = []
    try:
        for i in range(samples + 1):  # the first one warms up and is not counted
            await asyncio.sleep(random.uniform(0, ARQ_POLL_S))
            await pool.enqueue_job("stamp", time.perf_counter())
            latency = await asyncio.wait_for(started.get(), timeout=10)
            latencies += [latency] if i else []
    finally:
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)  # let the last job record its result
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
            await worker.close()
        await pool.aclose(close_connection_pool=True)
    return {"pickup_p50_ms": percentile(latencies, 0.5) * 1000, "pickup_p99_ms": percentile(latencies, 0.99) * 1000}


async def stock_arq_round(cfg: Config) -> Figures:
    return {**await arq_drain(cfg, cfg.arq_jobs), **await arq_pickup(cfg, cfg.arq_latency_samples)}


async def tuned_arq_round(cfg: Config) -> Figures:
    return await arq_drain(cfg, cfg.jobs, **TUNED_ARQ)
