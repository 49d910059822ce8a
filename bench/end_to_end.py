"""End to end: jobs POSTed while the worker runs, from the HTTP request to `succeeded` in the ledger."""

from __future__ import annotations

from conveyor_client import Client, ledger_span_s, post_jobs, truncate_jobs, wait_rows
from harness import Figures, rate


async def e2e_phase(c: Client) -> Figures:
    """POST N jobs while the worker runs; rate from the ledger (first insert -> last finish)."""
    await truncate_jobs(c)
    load = await post_jobs(c, c.cfg.jobs)
    done = await wait_rows(c, "status = 'succeeded'", load.ok)
    return {
        "e2e_rate": rate(done, await ledger_span_s(c, "created_at", "finished_at")),
        "e2e_post_rate": rate(load.ok, load.elapsed_s),
    }
