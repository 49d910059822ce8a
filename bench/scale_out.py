"""Scale-out: the same backlog drained by 1, 2, 4, … `default` worker processes; each rate from the ledger."""

from __future__ import annotations

from conveyor_client import Client, admin_post, ledger_span_s, post_jobs, reset, wait_rows
from harness import Figures, rate

QUEUE = "/api/v1/queues/default"


async def drain_with(c: Client, workers: int) -> float:
    """Drain a fresh backlog with `workers` processes, all started and ready before any job may start.

    The queue is paused while the backlog is recorded and the workers start (a pause holds at the claim), so
    the first job starts only once every process takes jobs: the rate is theirs together, not the first one's
    alone while the others import. The backlog is single POSTs, as the drain phase's: batch members would add
    the batch's completion check to every finish.
    """
    await reset(c)
    await admin_post(c, f"{QUEUE}/pause")
    try:
        accepted = (await post_jobs(c, c.cfg.jobs)).ok
        c.stack.start_workers(workers)
        await c.stack.workers_ready()
    finally:
        await admin_post(c, f"{QUEUE}/resume")
    try:
        done = await wait_rows(c, "status = 'succeeded'", accepted)
        return rate(done, await ledger_span_s(c, "started_at", "finished_at"))
    finally:
        c.stack.stop_workers()


async def scale_phase(c: Client) -> Figures:
    return {f"scale_{n}_rate": await drain_with(c, n) for n in c.cfg.scale_workers}
