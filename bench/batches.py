"""Batches: the gateway alone records `POST /api/v1/batches` of many `system.echo` jobs, a few in flight."""

from __future__ import annotations

from conveyor_client import Client, post_batch, reset
from harness import Figures, closed_loop, rate


async def batches_phase(c: Client) -> Figures:
    """`batches` batches of `batch_size` jobs, `batch_concurrency` in flight, no worker running: accepted
    (durable: each 202 follows its transaction's commit) jobs per second. The backlog is then discarded."""
    cfg = c.cfg
    accepted = 0

    async def call(i: int) -> bool:
        nonlocal accepted
        total = await post_batch(c, cfg.batch_size, first=i * cfg.batch_size)
        accepted += total
        return total > 0

    load = await closed_loop(cfg.batches, cfg.batch_concurrency, call)
    await reset(c)
    return {"batch_rate": rate(accepted, load.elapsed_s), "batch_p50_ms": load.figures("b")["b_p50_ms"]}
