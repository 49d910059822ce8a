"""Wraps JobSpec handlers for arq: validate, record transitions in the ledger, count, map errors to retry or fail."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic

from pydantic import BaseModel, ValidationError

from shared.core import json
from shared.core.errors import DependencyUnavailable, JobDeferred, JobError, PermanentJobError
from shared.core.json import utcnow
from shared.core.logging import job_id_var, job_type_var, request_id_var
from shared.infra.broker import HORIZON_MS, PRIORITY_BANDS, RUN_FUNCTION, retry_defer_s
from shared.infra.db import POSTGRES_ERRORS
from shared.infra.redis import REDIS_ERRORS
from shared.infra.slots import release, try_start
from shared.jobtypes.spec import AnySpec, JobSpec, Limits, P, R
from shared.ledger import batch_submission, records
from workers.arq_seam import Function, Retry, func, job_score
from workers.context import JobContext, WorkerContext

logger = logging.getLogger(__name__)

# arq's own retry ceiling is set far above ours (max_attempts <= 25): the runtime decides when a job is dead,
# and a job waiting on its type's limits goes through arq's retries without using an attempt.
ARQ_MAX_TRIES = 10**9
# How long a job held back by a limit waits before it asks again (jittered).
LIMIT_WAIT_S = 0.2
# A held job (JobDeferred) that may still expire comes back this long after its expiry, to fail then.
EXPIRY_MARGIN_S = 0.05
# A ledger write failed: arq keeps the job and runs it again after this long.
LEDGER_RETRY_S = 2.0
BATCH_ENQUEUE_TIMEOUT_S = 2.0
# Retries of an outcome write through a ledger blip, about 8 s in all, before arq runs the job again.
OUTCOME_WRITE_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 4.0)
# arq's per-function timeout is only a backstop behind the per-job asyncio.timeout below.
ARQ_TIMEOUT_MARGIN_S = 30.0

TRANSIENT = (TimeoutError, ConnectionError, OSError, DependencyUnavailable)


@dataclass(frozen=True, slots=True)
class BoundHandler(Generic[P, R]):
    spec: JobSpec[P, R]
    handle: Callable[[JobContext, P], Awaitable[R]]


def bind(spec: JobSpec[P, R], handle: Callable[[JobContext, P], Awaitable[R]]) -> BoundHandler[P, R]:
    """Pair a spec with its handler; mypy checks that the payload and result models match."""
    return BoundHandler(spec, handle)


AnyHandler = BoundHandler[Any, Any]


def error_body(exc: BaseException, *, retryable: bool) -> dict[str, Any]:
    name = exc.type_name if isinstance(exc, JobError) else type(exc).__name__
    return {"type": name, "message": str(exc)[:2000] or name, "retryable": retryable}


class Runtime:
    """The one arq function of a worker process: dispatches each job to its type's handler.

    One function per process (not one per type) keeps arq's function table independent of the registry,
    so a queue with no types yet still starts, and a new type needs no worker configuration.
    """

    def __init__(self, ctx: WorkerContext, handlers: Mapping[str, AnyHandler]) -> None:
        self.ctx = ctx
        self.handlers = handlers
        # Each metric's child per label values, looked up once: prometheus_client's `labels()` costs a lock and
        # a tuple hash per call, and every job makes four.
        self._counts: dict[tuple[str, str], Any] = {}
        self._waits: dict[str, Any] = {}
        self._durations: dict[str, Any] = {}

    def _count(self, type_name: str, outcome: str) -> None:
        child = self._counts.get((type_name, outcome))
        if child is None:
            child = self._counts[type_name, outcome] = self.ctx.metrics.jobs.labels(type_name, outcome)
        child.inc()

    def _observe_wait(self, type_name: str, seconds: float) -> None:
        child = self._waits.get(type_name)
        if child is None:
            child = self._waits[type_name] = self.ctx.metrics.queue_wait.labels(type_name)
        child.observe(seconds)

    def _observe_duration(self, type_name: str, seconds: float) -> None:
        child = self._durations.get(type_name)
        if child is None:
            child = self._durations[type_name] = self.ctx.metrics.job_duration.labels(type_name)
        child.observe(seconds)

    def arq_function(self) -> Function:
        specs = [h.spec for h in self.handlers.values()]
        cap = max((s.max_timeout_s for s in specs), default=60.0)
        return func(
            self.run,
            name=RUN_FUNCTION,
            timeout=cap + ARQ_TIMEOUT_MARGIN_S,
            max_tries=ARQ_MAX_TRIES,
            keep_result=self.ctx.settings.jobs.result_ttl_s,
        )

    async def run(self, ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """arq's entry for every job of this process: `args[0]` is the envelope built by `shared.infra.broker`.

        A PostgreSQL error at any ledger transition becomes an arq `Retry`: arq keeps the job and runs it
        again shortly, so a ledger hiccup never strands a job (its effect may run twice: at-least-once).
        """
        envelope: dict[str, Any] = args[0]
        early_s = _early_s(job_score(ctx))
        if early_s > 0:
            # A poll read the id while the job ran, and took it again just after a retry had moved it: arq
            # cannot tell a banded score is not due yet. Back to where the retry put it, untouched.
            raise Retry(defer=retry_defer_s(early_s, envelope.get("priority", "normal")))
        tokens = (
            job_id_var.set(envelope["id"]),
            job_type_var.set(envelope["type"]),
            request_id_var.set(envelope.get("request_id")),
        )
        try:
            return await self._run(envelope)
        except POSTGRES_ERRORS as exc:
            logger.warning("job.ledger_unavailable", extra={"reason": type(exc).__name__})
            raise Retry(defer=retry_defer_s(LEDGER_RETRY_S, envelope.get("priority", "normal"))) from exc
        finally:
            for var, token in zip((job_id_var, job_type_var, request_id_var), tokens, strict=True):
                var.reset(token)

    async def _run(self, envelope: dict[str, Any]) -> dict[str, Any]:
        job_id, type_name = envelope["id"], envelope["type"]
        expires_at = envelope.get("expires_at")
        if expires_at and dt.datetime.fromisoformat(expires_at) < utcnow():
            error = {"type": "JobExpired", "message": "the job was not started before it expired", "retryable": False}
            if await records.mark_expired(self.ctx.pg, job_id, error):  # only if it never started
                await self._announce(job_id, "failed")
                await self._member_finished(envelope.get("batch_id"))
                self._count(type_name, "expired")
                logger.info("job.expired")
                return {"status": "failed", "error": error}
        handler = self.handlers.get(type_name)
        limits = handler.spec.limits if handler is not None else None
        if limits is None or (limits.concurrency_per_owner is None and limits.per_second is None):
            return await self._start(envelope, handler)
        await self._wait_for_limits(envelope, limits)
        try:
            return await self._start(envelope, handler)
        finally:
            # Shielded: a cancel landing while the slot is given back must not leave it held for the lease.
            with contextlib.suppress(*REDIS_ERRORS):
                await asyncio.shield(
                    release(self.ctx.cache, limits, job_type=type_name, owner=envelope["owner"], job_id=job_id)
                )

    async def _wait_for_limits(self, envelope: dict[str, Any], limits: Limits) -> None:
        """A job over its type's limits waits in the queue (arq Retry before the run is recorded): it uses no
        attempt and never fails for it. The cache being down opens the limits rather than stopping work."""
        hold_s = float(envelope["timeout_s"]) + self.ctx.settings.worker.lease_s
        try:
            allowed = await try_start(
                self.ctx.cache, limits, job_type=envelope["type"], owner=envelope["owner"], job_id=envelope["id"],
                hold_s=hold_s,
            )  # fmt: skip
        except REDIS_ERRORS as exc:
            logger.warning("job.limits_unavailable", extra={"reason": type(exc).__name__})
            return
        if not allowed:
            self._count(envelope["type"], "held")
            wait_s = LIMIT_WAIT_S * random.uniform(0.5, 1.5)  # noqa: S311 - spreading retries, not cryptography
            raise Retry(defer=retry_defer_s(wait_s, envelope.get("priority", "normal")))

    async def _start(self, envelope: dict[str, Any], handler: AnyHandler | None) -> dict[str, Any]:
        job_id, type_name = envelope["id"], envelope["type"]
        record = await self._record_start(job_id, int(envelope.get("generation", 0)))
        if record is None:
            logger.info("job.skipped_duplicate")
            return {"status": "skipped"}
        await self._announce(job_id, "running")
        attempt = record.attempts
        self._count(type_name, "started")
        self._observe_wait(type_name, max((utcnow() - record.scheduled_for).total_seconds(), 0.0))
        if handler is None:
            return await self._fail(record, attempt, PermanentJobError(f"no handler for job type {type_name!r}"))
        if attempt > record.max_attempts:
            # The write of an earlier final failure was lost (ledger outage): do not run past the limit.
            return await self._fail(
                record, attempt, PermanentJobError("every attempt was used", type_name="AttemptsExhausted")
            )
        return await self._attempt(handler, record, attempt)

    async def _record_start(self, job_id: str, generation: int) -> records.JobRecord | None:
        """Record the start with the other jobs starting now. A shutdown landing meanwhile does not take the start
        back (its group is written anyway): once written, the attempt is given back, as for a shutdown mid-run."""
        starting = asyncio.ensure_future(self.ctx.outcomes.start(job_id, generation))
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            with contextlib.suppress(*POSTGRES_ERRORS):
                record = await starting
                if record is not None:
                    await self._requeue(record, record.attempts)
            raise

    async def _attempt(self, handler: AnyHandler, record: records.JobRecord, attempt: int) -> dict[str, Any]:
        job = JobContext(
            job_id=record.id, type=record.type, owner=record.owner, attempt=attempt,
            max_attempts=record.max_attempts, worker=self.ctx,
        )  # fmt: skip
        metrics = self.ctx.metrics
        started = time.perf_counter()
        metrics.jobs_running.inc()
        try:
            payload = handler.spec.payload_model.model_validate(self.ctx.sealer.open(record.payload))
            async with asyncio.timeout(record.timeout_s):
                result = await handler.handle(job, payload)
            checked = _checked(handler.spec.result_model, result)
        except asyncio.CancelledError:
            # Shutdown: the attempt did not finish; arq keeps the job and another worker runs it.
            await self._requeue(record, attempt)
            raise
        except JobDeferred as exc:
            return await self._defer(record, attempt, exc)
        except (PermanentJobError, ValidationError) as exc:
            return await self._fail(record, attempt, exc)
        except TimeoutError as exc:
            timeout = TimeoutError(f"the attempt ran past its timeout of {record.timeout_s:g}s")
            return await self._retry_or_fail(handler.spec, record, attempt, JobTimeout(str(timeout)), cause=exc)
        except (JobError, *TRANSIENT) as exc:
            return await self._retry_or_fail(handler.spec, record, attempt, exc)
        except Exception as exc:
            logger.exception("job.unexpected_error", extra={"attempt": attempt})
            return await self._retry_or_fail(handler.spec, record, attempt, exc)
        finally:
            metrics.jobs_running.dec()
            self._observe_duration(record.type, time.perf_counter() - started)
        result_json = checked.model_dump(mode="json")
        too_large = ResultTooLarge.check(result_json, self.ctx.settings.jobs.result_max_bytes)
        if too_large is not None:
            # Failed, not stored: neither the ledger nor arq's result record (the returned dict) gets it.
            return await self._fail(record, attempt, too_large)
        return await self._succeed(record, attempt, result_json)

    async def _announce(self, job_id: str, status: str) -> None:
        """Tell event-stream listeners (any gateway) that the ledger changed; best effort, never fails a job."""
        try:
            await self.ctx.announcements.publish_status(job_id, status)
        except REDIS_ERRORS as exc:
            logger.warning("job.announce_failed", extra={"reason": type(exc).__name__})

    async def _member_finished(self, batch_id: str | None) -> None:
        """A batch member finished: complete the batch if it was the last (exactly once across workers)."""
        if batch_id is None:
            return
        try:
            await batch_submission.complete_batch(
                self.ctx.pg, self.ctx.jobs_redis, self.ctx.registry, batch_id,
                sealer=self.ctx.sealer, enqueue_timeout_s=BATCH_ENQUEUE_TIMEOUT_S,
                queue_cap=self.ctx.settings.security.max_queued_per_owner,
            )  # fmt: skip
        except (*POSTGRES_ERRORS, *REDIS_ERRORS) as exc:  # the reconciler completes it later
            logger.warning("batch.completion_deferred", extra={"batch_id": batch_id, "reason": type(exc).__name__})

    async def _requeue(self, record: records.JobRecord, attempt: int) -> None:
        """The attempt was interrupted: by a shutdown (back to the queue) or by a cancel (already recorded)."""
        try:
            requeued = await asyncio.shield(records.mark_requeued(self.ctx.pg, record))
        except POSTGRES_ERRORS as exc:  # the job still re-runs; only its attempt count is not given back
            logger.warning("job.requeue_unrecorded", extra={"reason": type(exc).__name__})
            return
        if requeued:
            await self._announce(record.id, "queued")
            self._count(record.type, "requeued")
            logger.info("job.requeued", extra={"attempt": attempt})
        else:
            self._count(record.type, "cancelled")
            logger.info("job.interrupted", extra={"attempt": attempt})

    async def _defer(self, record: records.JobRecord, attempt: int, exc: JobDeferred) -> dict[str, Any]:
        """The handler cannot run the job yet: it waits in the queue and the attempt is given back, as for a
        job held by its type's limits."""
        if await self._record(lambda: records.mark_deferred(self.ctx.pg, record)):
            await self._announce(record.id, "queued")
        self._count(record.type, "held")
        wait_s = exc.wait_s
        to_expiry = (record.expires_at - utcnow()).total_seconds() if record.expires_at is not None else -1.0
        if record.attempts <= 1 and to_expiry > 0:  # never started: back at its expiry, to fail on time
            wait_s = min(wait_s, to_expiry + EXPIRY_MARGIN_S)
        logger.info("job.deferred", extra={"attempt": attempt, "wait_s": round(wait_s, 3), "reason": str(exc)})
        raise Retry(defer=retry_defer_s(wait_s, record.priority)) from exc

    async def _record(self, write: Callable[[], Awaitable[bool]]) -> bool:
        """Write an attempt's outcome, retrying in place through a ledger blip: the outcome is known, so
        re-running the handler (what arq's Retry does once this gives up) is the last resort."""
        for delay in OUTCOME_WRITE_BACKOFF_S:
            try:
                return await write()
            except POSTGRES_ERRORS as exc:
                logger.warning("job.outcome_write_retry", extra={"reason": type(exc).__name__, "in_s": delay})
            await asyncio.sleep(delay)
        return await write()

    async def _succeed(self, record: records.JobRecord, attempt: int, result: dict[str, Any]) -> dict[str, Any]:
        if await self._record(lambda: self.ctx.outcomes.succeed(record, result)):
            await self._announce(record.id, "succeeded")
            await self._member_finished(record.batch_id)
            self._count(record.type, "succeeded")
            logger.info("job.succeeded", extra={"attempt": attempt})
        else:
            logger.warning("job.fenced", extra={"attempt": attempt})
        return {"status": "succeeded", "result": result}

    async def _fail(self, record: records.JobRecord, attempt: int, exc: BaseException) -> dict[str, Any]:
        error = error_body(exc, retryable=False)
        if await self._record(lambda: records.mark_failed(self.ctx.pg, record, error)):
            await self._announce(record.id, "failed")
            await self._member_finished(record.batch_id)
        self._count(record.type, "failed")
        logger.info("job.failed", extra={"attempt": attempt, "error_type": error["type"]})
        return {"status": "failed", "error": error}

    async def _retry_or_fail(
        self,
        spec: AnySpec,
        record: records.JobRecord,
        attempt: int,
        exc: BaseException,
        cause: BaseException | None = None,
    ) -> dict[str, Any]:
        if attempt >= record.max_attempts:
            return await self._fail(record, attempt, exc)
        defer_s = getattr(exc, "defer_s", None) or spec.backoff.delay_s(attempt)
        error = error_body(exc, retryable=True)
        next_at = utcnow() + dt.timedelta(seconds=defer_s)
        if await self._record(lambda: records.mark_retrying(self.ctx.pg, record, error, next_at)):
            await self._announce(record.id, "retrying")
        self._count(record.type, "retried")
        logger.info(
            "job.retry_scheduled", extra={"attempt": attempt, "defer_s": round(defer_s, 3), "error_type": error["type"]}
        )
        raise Retry(defer=retry_defer_s(defer_s, record.priority)) from (cause or exc)


def _checked(model: type[BaseModel], result: Any) -> BaseModel:
    """The handler's result as its type's result model. One of that very model, immutable, was validated when
    it was made and is taken as it is; anything else (a dict, another model, a mutable one) is validated."""
    if type(result) is model and model.model_config.get("frozen"):
        return result
    return model.model_validate(result.model_dump() if isinstance(result, BaseModel) else result)


def _early_s(score: int | None) -> float:
    """How long before its due time arq started a job, from its banded score (see `shared.infra.broker`)."""
    if score is None:
        return 0.0
    now = int(time.time() * 1000)
    due = next(
        (score + band for band in sorted(PRIORITY_BANDS.values(), reverse=True) if score + band <= now + HORIZON_MS),
        now,
    )
    return max(due - now, 0) / 1000


class ResultTooLarge(PermanentJobError):
    """A result over RESULT_MAX_BYTES of JSON. Every read of the job would decode it (tens of times its size in
    the gateway's memory) and Redis would keep a copy for RESULT_TTL_S, so it is stored nowhere: the job fails,
    permanently, since running it again returns the same result."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the result is {size} bytes of JSON, over the limit of {limit} bytes (RESULT_MAX_BYTES): return"
            " a smaller result, and write large output to an artifact (storage) and return its id instead"
        )

    @classmethod
    def check(cls, result: Any, limit: int) -> ResultTooLarge | None:
        size = len(json.dumps(result))
        return cls(size, limit) if size > limit else None


class JobTimeout(JobError):
    """An attempt ran past its timeout; retried like any transient failure."""
