"""WorkerContext (settings, pools, mailer, metrics) built on start-up, and JobContext, what a handler is given."""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field

import aiohttp
from arq.connections import ArqRedis

from shared.core.metrics import Metrics
from shared.core.settings import WorkerSettings
from shared.infra import events
from shared.infra.db import Pool
from shared.infra.redis import REDIS_ERRORS, CacheRedis
from shared.infra.sealing import Sealer
from shared.jobtypes.spec import Registry
from workers.announcements import GroupedAnnouncements
from workers.mailer import MailSender
from workers.outcomes import GroupedOutcomes

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerContext:
    settings: WorkerSettings
    queue: str
    pg: Pool
    cache: CacheRedis
    jobs_redis: ArqRedis
    mailer: MailSender
    metrics: Metrics
    registry: Registry
    http: aiohttp.ClientSession  # outbound calls (webhooks), see workers.families.webhook.outbound
    cpu: Executor  # CPU-heavy work off the event loop, see workers.families.dataset.cpu
    sealer: Sealer  # opens the secret payload fields of a job about to run
    # The starts and successes of this process's jobs, group-committed on `pg`, and the statuses its jobs reach,
    # announced in groups on `cache`; both closed (`close`) when the worker stops.
    outcomes: GroupedOutcomes = field(init=False)
    announcements: GroupedAnnouncements = field(init=False)

    def __post_init__(self) -> None:
        outcomes = GroupedOutcomes(
            self.pg, pool_max=self.settings.postgres.pool_max, max_jobs=self.settings.worker.max_jobs
        )
        object.__setattr__(self, "outcomes", outcomes)
        object.__setattr__(self, "announcements", GroupedAnnouncements(self.cache))

    async def close(self) -> None:
        """Write and announce what is still waiting; before the pools close."""
        await self.outcomes.close()
        await self.announcements.close()


@dataclass(frozen=True, slots=True)
class JobContext:
    """One attempt of one job, as its handler sees it."""

    job_id: str
    type: str
    owner: str
    attempt: int
    max_attempts: int
    worker: WorkerContext

    async def progress(self, percent: float | None = None, step: str | None = None, message: str | None = None) -> None:
        """Report progress: shown in `GET /api/v1/jobs/{id}` and pushed to its event stream.

        Best effort: progress lives in the disposable cache, so a cache outage never fails the job.
        """
        update = events.Progress(percent=percent, step=step, message=message)
        try:
            await events.set_progress(self.worker.cache, self.job_id, update)
        except REDIS_ERRORS as exc:
            logger.warning("job.progress_unrecorded", extra={"reason": type(exc).__name__})
