"""Load what a request names, with ownership applied (another owner's job is a 404), and render it whole."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gateway.http.resources import job_resource
from gateway.keys import CACHE, PG_POOL, PRINCIPAL
from shared.core.errors import NotFound
from shared.core.ids import well_formed_id
from shared.infra import events
from shared.infra.redis import REDIS_ERRORS
from shared.ledger import records

logger = logging.getLogger(__name__)


async def visible_job(request: web.Request) -> records.JobRecord:
    """The job named in the path, if the caller may see it."""
    job_id = request.match_info["job_id"]
    record = await records.get_job(request.app[PG_POOL], job_id) if well_formed_id(job_id) else None
    if record is None or not request[PRINCIPAL].can_see(record.owner):
        raise NotFound(f"no job {job_id!r}")
    return record


async def job_views(app: web.Application, jobs: list[records.JobRecord]) -> list[dict[str, Any]]:
    """Job resources with the progress of running jobs (from the cache; left out while it is down)."""
    running = [r.id for r in jobs if r.status == "running"]
    try:
        progress = await events.get_progresses(app[CACHE], running)
    except REDIS_ERRORS as exc:
        logger.warning("job.progress_unavailable", extra={"reason": type(exc).__name__})
        progress = {}
    return [job_resource(r, progress=progress.get(r.id)) for r in jobs]


async def job_view(app: web.Application, record: records.JobRecord) -> dict[str, Any]:
    return (await job_views(app, [record]))[0]
