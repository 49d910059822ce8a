"""Retention: the scheduler deletes finished jobs from the ledger RETENTION_DAYS after they finished, and
sweeps the temp files a killed process left in storage.

A job whose row cannot be deleted is logged, counted in `background_item_failures_total{loop="retention"}`
and passed over for the rest of the pass (tried again in the next): every other job is purged as usual,
and the temp-file sweep runs whatever the purge met.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import asyncpg

from shared.files import storage
from shared.infra import broker
from shared.infra.db import Pool
from shared.ledger import records
from workers.context import WorkerContext
from workers.loops.background import OUTAGES, isolated

logger = logging.getLogger(__name__)

BATCH = 1000
INTERVAL_S = 60.0

_DUE = """
SELECT id FROM jobs
WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished_at < now() - make_interval(secs => $1)
  AND id <> ALL($2::text[])
LIMIT $3
"""
# Only what Redis is cleaned by comes back: a batch of whole rows would be a thousand payloads and results.
_DELETE = """
DELETE FROM jobs WHERE id = ANY($1::text[]) AND status IN ('succeeded', 'failed', 'cancelled')
RETURNING id, generation
"""


async def purge_once(ctx: WorkerContext) -> int:
    """Delete every finished job past retention, a batch at a time, then sweep temp files; returns how many
    jobs were deleted."""
    removed = 0
    try:
        removed = await _purge_jobs(ctx)
    finally:  # an outage or a failure of the purge does not keep the sweep from running
        with isolated(ctx.metrics, "retention", "retention.temp_files_failed"):
            swept = await storage.remove_stale_temp_files(ctx.settings.storage)
            if swept:
                logger.info("retention.temp_files_removed", extra={"count": swept})
    return removed


async def _purge_jobs(ctx: WorkerContext) -> int:
    older_than_s = ctx.settings.jobs.retention_days * 86400
    removed = 0
    passed_over: list[str] = []
    while True:
        due = [r["id"] for r in await ctx.pg.fetch(_DUE, older_than_s, passed_over, BATCH)]
        if not due:
            break
        deleted = await _delete(ctx, due, passed_over)
        if deleted:
            await broker.drop_results(ctx.jobs_redis, deleted)
            removed += len(deleted)
        if len(due) < BATCH:
            break
    if removed:
        logger.info("retention.purged", extra={"count": removed})
    return removed


async def _delete(ctx: WorkerContext, job_ids: Sequence[str], passed_over: list[str]) -> list[str]:
    """Delete the jobs in one statement; if that fails, one by one, so that only the jobs that fail are
    passed over (added to `passed_over`). Returns the arq ids of the jobs deleted."""
    try:
        return await _delete_rows(ctx.pg, job_ids)
    except OUTAGES:
        raise
    except asyncpg.PostgresError as exc:  # some row refused: find which, one by one
        logger.warning("retention.batch_failed", extra={"count": len(job_ids), "reason": type(exc).__name__})
    deleted: list[str] = []
    for job_id in job_ids:
        with isolated(ctx.metrics, "retention", "retention.job_failed", job_id=job_id) as item:
            deleted += await _delete_rows(ctx.pg, [job_id])
        if item.failed:
            passed_over.append(job_id)
    return deleted


async def _delete_rows(pool: Pool, job_ids: Sequence[str]) -> list[str]:
    return [records.arq_id(r["id"], r["generation"]) for r in await pool.fetch(_DELETE, list(job_ids))]
