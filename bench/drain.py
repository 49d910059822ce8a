"""Drain: a fresh worker empties the backlog the gateway phase queued; its rate, CPU and memory."""

from __future__ import annotations

from conveyor_client import Client, ledger_span_s, wait_rows
from harness import Figures, cpu_seconds, rate, rss_mb


async def drain_phase(c: Client, accepted: int) -> Figures:
    """Start a fresh worker on the queued backlog; rate from the ledger (first start -> last finish)."""
    (worker,) = c.stack.start_workers(1)
    await wait_rows(c, "started_at IS NOT NULL", 1, interval=0.002)
    cpu0 = cpu_seconds(worker.pid)  # from the first job on: start-up (imports, pools) is not counted
    started0 = int(await c.pg.fetchval("SELECT count(*) FROM jobs WHERE started_at IS NOT NULL"))
    done = await wait_rows(c, "status = 'succeeded'", accepted)
    cpu = cpu_seconds(worker.pid) - cpu0
    return {
        "drain_rate": rate(done, await ledger_span_s(c, "started_at", "finished_at")),
        "worker_cpu_ms_per_job": cpu * 1000 / max(done - started0, 1),
        "worker_rss_mb": rss_mb(worker.pid),
    }
