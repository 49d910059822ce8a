"""The ledger reconciler: puts back on Redis every unfinished job the ledger holds and Redis has lost.

One bad item (a batch whose completion raises, a job whose enqueue does) is logged, counted in
`background_item_failures_total{loop="reconciler"}` and skipped: it never ends the pass for everyone else.
"""

from __future__ import annotations

import datetime as dt
import logging

from shared.infra import broker
from shared.ledger import batch_submission, batches, records
from workers.context import WorkerContext
from workers.loops.background import isolated

logger = logging.getLogger(__name__)


async def _put_back(ctx: WorkerContext, jobs: list[records.JobRecord]) -> list[str]:
    """Enqueue the jobs Redis lacks; returns their ids."""
    put_back: list[str] = []
    for job in await broker.missing_from_redis(ctx.jobs_redis, jobs):
        with isolated(ctx.metrics, "reconciler", "reconciler.job_failed", job_id=job.id):
            if await _enqueue(ctx, job):
                put_back.append(job.id)
    return put_back


async def _enqueue(ctx: WorkerContext, job: records.JobRecord) -> bool:
    if await broker.enqueue(ctx.jobs_redis, job):
        return True
    # arq still holds an outcome for this id while the ledger says unfinished: the ledger write of that
    # outcome was lost. The ledger wins; drop arq's record and run the job again.
    logger.warning("reconciler.stale_result", extra={"job_id": job.id, "status": job.status})
    await broker.drop_result(ctx.jobs_redis, job)
    return await broker.enqueue(ctx.jobs_redis, job)


async def complete_orphaned_batches(ctx: WorkerContext) -> None:
    """Batches whose last member finished without completing them (its worker died in between)."""
    grace_s = ctx.settings.worker.reconcile_grace_s
    cap = ctx.settings.security.max_queued_per_owner
    for batch_id in await batches.open_without_pending(ctx.pg, older_than_s=grace_s, limit=100):
        # A batch whose completion raises (a stored request no code path expected, say) stays open and is
        # tried again next pass; the others complete meanwhile.
        with isolated(ctx.metrics, "reconciler", "reconciler.batch_failed", batch_id=batch_id):
            await batch_submission.complete_batch(
                ctx.pg, ctx.jobs_redis, ctx.registry, batch_id, sealer=ctx.sealer, enqueue_timeout_s=2.0,
                queue_cap=cap,
            )  # fmt: skip


async def reconcile_once(ctx: WorkerContext) -> int:
    """One pass over every candidate, page by page; returns how many jobs were put back on Redis."""
    config = ctx.settings.worker
    horizon_s = max(60.0, 2 * config.reconcile_interval_s)
    after: tuple[dt.datetime, str] | None = None
    requeued = 0
    await complete_orphaned_batches(ctx)
    await broker.trim_abort_markers(ctx.jobs_redis, older_than_s=config.lease_s + 60)
    while True:
        page = await records.reconcile_candidates(
            ctx.pg, grace_s=config.reconcile_grace_s, horizon_s=horizon_s, after=after, limit=config.reconcile_batch
        )
        if not page:
            return requeued
        put_back = await _put_back(ctx, page)
        if put_back:
            await records.touch(ctx.pg, put_back)
            ctx.metrics.reconciled.inc(len(put_back))
            logger.info("reconciler.requeued", extra={"count": len(put_back)})
            requeued += len(put_back)
        after = (page[-1].updated_at, page[-1].id)
