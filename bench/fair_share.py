"""Fair share: the pickup of one owner's job while another owner's high-priority backlog waits."""

from __future__ import annotations

import math
from typing import Final

from conveyor_client import Client, post_job, truncate_jobs, wait_rows, wait_started
from harness import STALL_S, Figures, closed_loop, percentile

WAITED: Final = "SELECT extract(epoch FROM started_at - created_at) FROM jobs WHERE id = $1"
FLOOD_SLEEP_S: Final = 0.2
FLOOD_SAMPLES: Final = 10


async def flood_phase(c: Client) -> Figures:
    """Pickup of one owner's jobs while another owner's high-priority backlog waits (the fair share at work).

    The flood: half a phase of high-priority jobs of FLOOD_SLEEP_S each from owner `flood`, far more than the
    worker's slots; then one normal job at a time from `bench`, ledger created_at -> started_at.
    """
    await truncate_jobs(c)
    flood = {"priority": "high", "payload": {"sleep_s": FLOOD_SLEEP_S}}

    async def call(i: int) -> bool:
        return await post_job(c, i, extra=flood, as_="flood") is not None

    load = await closed_loop(c.cfg.jobs // 2, c.cfg.concurrency, call)
    waited = []
    for i in range(FLOOD_SAMPLES):
        if not await c.pg.fetchval("SELECT count(*) FROM jobs WHERE owner = 'flood' AND status = 'queued'"):
            break  # the backlog is gone: a sample now would measure an idle worker
        job_id = await post_job(c, i)
        if job_id is not None:
            await wait_started(c, job_id, within=STALL_S)
            waited.append(await c.pg.fetchval(WAITED, job_id))
    await wait_rows(c, "status = 'succeeded'", load.ok + len(waited))
    latencies = [float(w) for w in waited if w is not None]
    return {"flood_pickup_p50_ms": percentile(latencies, 0.5) * 1000 if latencies else math.nan}
