"""One definition per OS process (queue, job families, default metrics port) and the WorkerProcess that runs it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Final

from shared.core.errors import Conflict
from shared.core.metrics import Metrics
from shared.core.settings import WorkerSettings
from shared.infra import broker, db, fair_share, redis, wakeup
from shared.infra.db import POSTGRES_ERRORS
from shared.infra.redis import REDIS_ERRORS
from shared.infra.sealing import Sealer
from shared.jobtypes import builtin_registry
from shared.jobtypes.spec import Queue, Registry
from shared.ledger import pause as queue_pause
from workers import health_server
from workers.context import WorkerContext
from workers.families import builtin_handlers
from workers.families.dataset import cpu
from workers.families.email.sender import SmtpMailSender
from workers.families.webhook import outbound
from workers.loops import reconciler, retention, scheduling
from workers.loops.background import every, pause
from workers.mailer import MailSender
from workers.priority_worker import PriorityWorker
from workers.runtime import ARQ_MAX_TRIES, AnyHandler, Runtime

logger = logging.getLogger(__name__)

# How often a worker copies its queue's pause flag to the start gate and renews its liveness.
CONTROL_INTERVAL_S: Final = 0.25
# A wake-up signal while every slot is busy and nobody is limited publishes the shares again before the next
# control step (the job may be an owner's under its share, who must get the next free slot), at most once per
# this long.
SHARES_EARLY_GAP_S: Final = 0.05
# After losing Redis, how long arq's polling loop waits before it starts again.
RESTART_DELAY_S: Final = 1.0
# At stop, how long the background loops (control, leases, ledger upkeep) get to end their current step.
BACKGROUND_STOP_S: Final = 3.0


@dataclass(frozen=True, slots=True)
class ProcessDef:
    name: str
    queue: Queue
    metrics_port: int
    maintains_ledger: bool = False


PROCESSES: Final[Mapping[str, ProcessDef]] = {
    "default": ProcessDef("default", Queue.DEFAULT, 9101),
    "heavy": ProcessDef("heavy", Queue.HEAVY, 9102),
    "scheduler": ProcessDef("scheduler", Queue.SCHEDULER, 9103, maintains_ledger=True),
}


class WorkerProcess:
    """Runs one process definition until `stop()` (SIGTERM in production): stop taking jobs, let running
    ones finish within SHUTDOWN_GRACE_S, re-queue the rest."""

    def __init__(
        self,
        definition: ProcessDef,
        settings: WorkerSettings,
        *,
        registry: Registry | None = None,
        handlers: Mapping[str, AnyHandler] | None = None,
        mailer: MailSender | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.definition = definition
        self.settings = settings
        self.registry = registry or builtin_registry(settings.job_types)
        all_handlers = handlers if handlers is not None else builtin_handlers()
        self.handlers = {n: h for n, h in all_handlers.items() if h.spec.queue is definition.queue}
        self.mailer = mailer or SmtpMailSender(settings.smtp)
        self.metrics = metrics or Metrics()
        self.metrics_port: int | None = None
        self._worker: PriorityWorker | None = None
        self._started = asyncio.Event()
        self._stop_requested = False
        self._loops_end = asyncio.Event()  # set once arq's loop is over: the background loops end too
        self._shares_stale = asyncio.Event()  # a job was signalled while every slot was busy (see _shares_loop)
        self._slots = 0  # the queue's live slots at the last control step: the shares' capacity
        self._limits_nobody = True  # the shares last published limit no owner
        self.paused = False
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.member = broker.worker_member(self.worker_id, settings.worker.max_jobs)

    async def run(self) -> None:
        s, d = self.settings, self.definition
        port = s.worker.metrics_port if s.worker.metrics_port is not None else d.metrics_port
        async with (
            db.open_pool(s.postgres) as pg,
            redis.open_cache(s.redis) as cache,
            broker.open_jobs_redis(s.redis, queue=d.queue.value) as jobs_redis,
            health_server.serve(self.metrics, s.worker.metrics_host, port, self._health) as bound_port,
            outbound.open_http(s.webhook) as http,
        ):
            self.metrics_port = bound_port
            with cpu.open_cpu_pool(s.worker.cpu_workers, in_flight=self.metrics.cpu_tasks) as cpu_pool:
                ctx = WorkerContext(
                    settings=s, queue=d.queue.value, pg=pg, cache=cache, jobs_redis=jobs_redis,
                    mailer=self.mailer, metrics=self.metrics, registry=self.registry, http=http, cpu=cpu_pool,
                    sealer=Sealer.from_config(s.crypto),
                )  # fmt: skip
                await self._run_worker(ctx)

    async def _run_worker(self, ctx: WorkerContext) -> None:
        s, d = self.settings, self.definition
        runtime = Runtime(ctx, self.handlers)
        self._worker = worker = PriorityWorker(
            gate_queue=d.queue.value,
            functions=[runtime.arq_function()],
            queue_name=broker.queue_key(d.queue.value),
            redis_pool=ctx.jobs_redis,
            handle_signals=False,  # our entry point owns signals and calls stop()
            allow_abort_jobs=True,  # POST /jobs/{id}/cancel interrupts a running job through arq's abort set
            max_jobs=s.worker.max_jobs,
            poll_delay=s.worker.poll_delay_s,
            keep_result=s.jobs.result_ttl_s,
            max_tries=ARQ_MAX_TRIES,
            log_results=False,  # results and arguments are user data: our own job.* events carry ids only
            job_serializer=broker.serialize,
            job_deserializer=broker.deserialize,
            health_check_interval=10,
            lease_s=s.worker.lease_s,  # the in-progress key is the job's lease: short, renewed while the job runs
        )
        await self._control_step(ctx)  # a queue paused before start-up stays paused
        if self._stop_requested:  # stopped while still connecting: never take a job
            return
        background = [
            asyncio.create_task(self._control_loop(ctx, worker), name="control"),
            asyncio.create_task(self._lease_loop(ctx, worker), name="leases"),
            asyncio.create_task(
                wakeup.listen(ctx.jobs_redis, d.queue.value, partial(self._signalled, worker), until=self._loops_end),
                name="wakeup",
            ),
            asyncio.create_task(self._shares_loop(ctx), name="shares"),
        ]
        if d.maintains_ledger:
            loops = [
                (s.worker.reconcile_interval_s, reconciler.reconcile_once, "reconciler"),
                (retention.INTERVAL_S, retention.purge_once, "retention"),
                (scheduling.INTERVAL_S, scheduling.fire_due, "schedules"),
            ]
            background += [
                asyncio.create_task(every(i, partial(step, ctx), name=name, until=self._loops_end), name=name)
                for i, step, name in loops
            ]
        self.metrics.worker_up.labels(d.queue.value).set(1)
        logger.info("worker.started", extra={"queue": d.queue.value, "types": sorted(self.handlers)})
        self._started.set()
        try:
            await self._poll_until_stopped(worker)
        finally:
            self.metrics.worker_up.labels(d.queue.value).set(0)
            # Running jobs keep their leases (and their cancel checks) until they end.
            if worker.running and not self._stop_requested:
                self.stop()
            await worker.wait_running()
            await ctx.close()  # the last jobs' grouped writes and announcements, before the pools close
            self._loops_end.set()  # each loop ends after its current step, never inside a driver call
            self._shares_stale.set()  # the shares loop waits for it: it sees the end at once
            _, stuck = await asyncio.wait(background, timeout=BACKGROUND_STOP_S)
            if stuck:
                logger.warning("worker.background_stuck", extra={"tasks": sorted(t.get_name() for t in stuck)})
                for task in stuck:
                    task.cancel()
                await asyncio.wait(stuck, timeout=BACKGROUND_STOP_S)
            with contextlib.suppress(*REDIS_ERRORS):
                await worker.forget_health_check()
                await broker.leave(ctx.jobs_redis, d.queue.value, self.member)
            logger.info("worker.stopped", extra={"queue": d.queue.value, "completed": worker.completed})

    async def _poll_until_stopped(self, worker: PriorityWorker) -> None:
        """arq's loop ends on the first Redis error; a blip must not take the worker (and its leases) down."""
        while True:
            try:
                await worker.async_run()
                return
            except REDIS_ERRORS as exc:
                if self._stop_requested:
                    return
                logger.warning("worker.redis_lost", extra={"reason": type(exc).__name__})
                await asyncio.sleep(RESTART_DELAY_S)

    async def _control_step(self, ctx: WorkerContext) -> None:
        """Copy the queue's pause flag from the ledger to its start gate in Redis, record this worker (and its
        slots) as live, and publish the owners' fair shares of the queue's slots. The gate, not this copy,
        decides every start (see `shared.infra.claim`): this only makes sure Redis holds the ledger's flag again
        after a restart or flush, and never undoes a newer pause."""
        flag = await queue_pause.publish(ctx.pg, ctx.jobs_redis, ctx.queue)
        if flag.paused != self.paused:
            logger.info("worker.paused" if flag.paused else "worker.resumed", extra={"queue": ctx.queue})
        self.paused = flag.paused
        self._slots = await broker.heartbeat(ctx.jobs_redis, ctx.queue, self.member, ttl_s=broker.WORKER_TTL_S)
        await self._publish_shares(ctx)

    async def _publish_shares(self, ctx: WorkerContext) -> None:
        limited = await fair_share.publish(
            ctx.pg, ctx.jobs_redis, ctx.queue, capacity=self._slots, share=self.settings.worker.owner_share
        )
        self._limits_nobody = not limited
        if self._worker is not None:
            self._worker.shares_published()

    def _signalled(self, worker: PriorityWorker) -> None:
        """A wake-up signal: a job was enqueued. With a free slot the worker takes it now. With none, and shares
        that limit nobody, the job may be the first of an owner under its share that the shares do not know as
        waiting yet: the next freed slot would go to whoever is first in priority order (another owner's backlog),
        so the shares are published again. Shares that limit some owner already let any other owner's job take
        the next freed slot: they wait for the control step, and the claims for the ledger's starts."""
        if self._limits_nobody and not worker.has_free_slot():
            self._shares_stale.set()
        worker.signal()

    async def _shares_loop(self, ctx: WorkerContext) -> None:
        """Publish the shares again when a signal asks for it (`_signalled`), between the control steps, at most
        once per SHARES_EARLY_GAP_S however many signals come: a flood of enqueues costs a few ledger reads."""
        while True:
            await self._shares_stale.wait()
            if self._loops_end.is_set():
                return
            self._shares_stale.clear()
            try:
                await self._publish_shares(ctx)
            except (*REDIS_ERRORS, *POSTGRES_ERRORS) as exc:
                logger.warning("worker.shares_unavailable", extra={"reason": type(exc).__name__})
            if await pause(SHARES_EARLY_GAP_S, self._loops_end):
                return

    async def _lease_loop(self, ctx: WorkerContext, worker: PriorityWorker) -> None:
        """Renew the lease of every running job three times per lease period."""
        lease_s = self.settings.worker.lease_s
        while not await pause(lease_s / 3, self._loops_end):
            try:
                await broker.renew_leases(ctx.jobs_redis, worker.running_job_ids(), lease_s=lease_s)
            except REDIS_ERRORS as exc:
                logger.warning("worker.lease_renewal_failed", extra={"reason": type(exc).__name__})

    async def _control_loop(self, ctx: WorkerContext, worker: PriorityWorker) -> None:
        while not await pause(CONTROL_INTERVAL_S, self._loops_end):
            try:
                if self._stop_requested:
                    # arq checks cancels only while it takes jobs; keep honouring them during the grace period.
                    await worker.cancel_aborted()
                await self._control_step(ctx)
            except (*REDIS_ERRORS, *POSTGRES_ERRORS, Conflict) as exc:
                logger.warning("worker.control_unavailable", extra={"reason": type(exc).__name__})

    async def started(self) -> None:
        await self._started.wait()

    def stop(self) -> None:
        """Stop taking jobs; running ones get SHUTDOWN_GRACE_S to finish, then are cancelled and re-queued.

        arq's own signal path cancels its main task mid-poll, which can leave that task waiting forever
        (seen on Python 3.11). Instead the worker drains (`workers.arq_seam`): arq's main loop waits for the
        running jobs and returns by itself, with no cancellation of the loop.
        """
        again, self._stop_requested = self._stop_requested, True
        worker = self._worker
        if worker is None or not worker.has_started:
            return
        if again:  # a second SIGTERM/SIGINT: no more grace
            worker.interrupt()
            return
        worker.drain()
        grace = self.settings.worker.shutdown_grace_s
        logger.info("worker.stopping", extra={"running": len(worker.running), "grace_s": grace})
        # Past the grace period: cancel what still runs; each attempt is given back and re-queued.
        asyncio.get_running_loop().call_later(grace, worker.interrupt)

    def _health(self) -> dict[str, object]:
        w = self._worker
        return {
            "queue": self.definition.queue.value,
            "taking_jobs": bool(w and w.taking_jobs and not self.paused),
            "paused": self.paused,
            "running": len(w.running) if w else 0,
        }
