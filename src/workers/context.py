"""WorkerContext (settings, pools, mailer, metrics) built on start-up, and JobContext, what a handler is given."""

from __future__ import annotations

from dataclasses import dataclass

from arq.connections import ArqRedis

from shared.db import Pool
from shared.jobs import Registry
from shared.mail import MailSender
from shared.metrics import Metrics
from shared.redis import CacheRedis
from shared.settings import WorkerSettings


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


@dataclass(frozen=True, slots=True)
class JobContext:
    """One attempt of one job, as its handler sees it."""

    job_id: str
    type: str
    owner: str
    attempt: int
    max_attempts: int
    worker: WorkerContext
