"""Pickup latency: one job at a time on an idle worker, after a random idle gap."""

from __future__ import annotations

import asyncio
import random

from conveyor_client import Client, post_job, truncate_jobs, wait_rows, wait_started
from harness import Figures, percentile


async def pickup_phase(c: Client) -> Figures:
    """One job at a time on an idle worker: ledger created_at -> started_at, both PostgreSQL now()."""
    await truncate_jobs(c)
    for i in range(c.cfg.latency_samples):
        await asyncio.sleep(random.uniform(0, c.cfg.latency_gap_s))
        job_id = await post_job(c, i)
        if job_id is not None:
            await wait_started(c, job_id)
    # Every sample finished before the next phase empties the ledger: a success written after that is fenced.
    await wait_rows(c, "status = 'succeeded'", int(await c.pg.fetchval("SELECT count(*) FROM jobs")))
    rows = await c.pg.fetch(
        "SELECT extract(epoch FROM started_at - created_at) AS s FROM jobs WHERE started_at IS NOT NULL"
    )
    latencies = [float(r["s"]) for r in rows]
    return {"pickup_p50_ms": percentile(latencies, 0.5) * 1000, "pickup_p99_ms": percentile(latencies, 0.99) * 1000}
