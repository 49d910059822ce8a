"""The one module of Conveyor that knows arq's worker from the inside; the rest calls it by names of ours.

arq 0.28.0 (pinned in pyproject) gives no hook for how a worker reads, claims, runs and finishes jobs, nor for
stopping it without cancelling its main task, so `ArqWorker` replaces four of its methods (and arq's
`start_jobs` with its own) and reads its private state:

- `_poll_iteration`: arq's own, line for line, except that the jobs are read and taken by `start_due` (ours),
  with the read window from `read_limit` (ours), instead of a `zrangebyscore` over the front of the sorted set
  and arq's `start_jobs`;
- `start_due`, for arq's `start_jobs`: the jobs are read and taken by `take` (ours: `due_ids` then `claim`, or
  one call where a subclass can) instead of a WATCH/MULTI round per job, then started exactly as arq starts
  them (`sem`, `job_counter`, `tasks`, `run_job`, `loop`, `_release_sem_dec_counter_on_complete`);
- `run_job`: arq's, with the job's record read before the function (one MGET for every job a claim took, or
  none when the claim returned the records with the jobs) instead of a MULTI/EXEC of six commands (the record,
  arq's retry counter with its expiry, the abort set), and the end written with the
  ends of every run finishing meanwhile instead of a MULTI/EXEC of six per job (arq's `finish_job` and
  `finish_failed_job`): one pipeline per group (`shared.infra.group_commit`) with one ZREM of the queue, the
  result records (arq's own, as arq's `serialize_result` writes them, so arq's `Job.result()` reads them; only
  while results are kept), the moves of retried jobs, one ZREM of the abort set for the jobs it named, and one
  DEL of every record and lease. A run returns only once its end is written. arq's retry counter goes: the
  ledger counts attempts and nothing reads `job_try` (it is the one the job was enqueued with). The rest is
  arq's: the function runs as a task in `job_tasks` under arq's timeout (a backstop), `Retry(defer)` moves
  the job by `defer` from now and frees its lease, a cancel on shutdown leaves it queued (lease freed) for
  another worker, an abort finishes it; the counters (`jobs_complete`, `jobs_failed`, `jobs_retried`); no
  job's arguments or result in the logs (arq logs them at INFO);
- `_cancel_aborted_jobs`: arq's cancel of the running jobs its abort set names, looking only while a function
  runs here (arq cancels nothing else) and with one ZRANGE instead of a MULTI/EXEC of four; a marker goes
  with its job's end (above), not at once;
- arq's state behind names of ours: `running` (`tasks`), `running_job_ids` (`job_tasks`), `taking_jobs`
  (`allow_pick_jobs`), `has_free_slot` (`job_counter`), `has_started` (`main_task`), `completed`
  (`jobs_complete`), `jobs_redis` (`pool`), `cancel_aborted` (`_cancel_aborted_jobs`), `forget_health_check`
  (`health_check_key`), `drain` (`allow_pick_jobs`, the burst switches), `interrupt`, `finish_writes` (the
  grouped ends written), and the lease (`in_progress_timeout_s`), set at construction; `job_score` reads the
  `score` arq puts in a job's ctx. arq's cron jobs are not run (Conveyor's schedules fire ordinary jobs): a
  worker given some refuses to start.

arq's read passes `start=self._queue_read_offset`; ours passes none (`shared.infra.broker.due_job_ids` reads
each window with `start=0`). That is no drift: arq 0.28 sets `_queue_read_offset = 0` in `Worker.__init__`,
never changes it, and takes no parameter for it, so arq itself always reads from the head of its sorted set.
We keep reading from the head on purpose: our read is several windows (high, normal and low priority, then
the parked jobs), and one offset shared by all of them would skip the first due jobs of each window, the most
urgent ones, while the claim script already serves each job once, atomically, whoever reads it too. Should a
later arq start moving the offset, `tests/unit/test_arq_pin.py` says so.

That test holds a digest of the source of every arq member this module replaces, calls or reads, derived
from this module's own code (plus `RELIED_ON`, what it depends on without naming it), and names each one that
changed in an installed arq, with what to re-read; it pins arq's job and result records the same way. Only
this module imports `arq.worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import SerializationError, deserialize_job_raw, serialize_result
from arq.utils import ms_to_datetime, timestamp_ms, to_ms
from arq.worker import Function, JobExecutionFailed, Retry, RetryJob, Worker, func

from shared.infra.group_commit import GroupCommit

__all__ = ["RELIED_ON", "ArqWorker", "ClaimedJob", "Function", "Retry", "func", "job_score"]

# A job taken by a claim: its id and its score in arq's sorted set, as arq's `run_job` takes them, and its arq
# record when the claim read it too (the run then reads nothing before it starts).
ClaimedJob = tuple[str, int] | tuple[str, int, bytes]

# arq members this module depends on without naming them, and why: each is pinned by the tripwire test too.
RELIED_ON: Final[Mapping[str, str]] = {
    "main": "`drain` ends arq's main loop through its burst branch: with max_burst_jobs 0 it must wait for the"
    " running tasks and return, with no cancellation",
    "async_run": "workers.processes runs the loop with it (again after a Redis error): it must set main_task"
    " (`has_started`) and return when main returns",
    "start_jobs": "`start_due` starts the jobs it takes as this starts them (sem, job_counter, tasks, run_job):"
    " port any change there",
    "finish_job": "`_write_finishes` writes what it writes at the end of a run (but arq's retry counter, which"
    " the seam never sets): port any change there",
    "finish_failed_job": "`_fail_unrun` and `_write_finishes` write what it writes for a job that cannot run:"
    " port any change there",
}


logger = logging.getLogger(__name__)

_NO_RESULT: Final = object()  # the run ended without a result to keep (a retry, a shutdown)


@dataclass(frozen=True, slots=True)
class _Finish:
    """What the end of one run writes to arq's keys (`ArqWorker._write_finishes`)."""

    job_id: str
    done: bool  # the job is over: it leaves the queue, its record and lease go
    result: bytes | None = None  # arq's result record, when results are kept
    result_px: int | None = None  # its lifetime in ms (None: for ever)
    incr_score: int | None = None  # not done: how far a Retry moves it in the queue
    marked: bool = False  # arq's abort set may name it: the marker goes too


@dataclass(frozen=True, slots=True)
class _Job:
    """A job's record as arq's result record repeats it (what is known of it, if it fails before it runs)."""

    job_id: str
    start_ms: int
    name: str = "<unknown>"
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    job_try: int = 1
    enqueue_ms: int = 0


@dataclass(frozen=True, slots=True)
class _Run:
    """How a function's run ended, as arq's `run_job` sorts it."""

    result: Any = _NO_RESULT  # what arq's result record keeps (_NO_RESULT: none)
    done: bool = False  # the job is over (else it stays queued: a retry, a shutdown)
    success: bool = False
    incr_score: int | None = None


def job_score(ctx: Mapping[Any, Any]) -> int | None:
    """The score the job had in arq's sorted set when it was taken (`run_job` puts it in the job's ctx)."""
    score = ctx.get("score")
    return int(score) if score is not None else None


class ArqWorker(Worker):
    """arq's Worker, reading due jobs through `due_ids` and taking them through `claim` (both for a subclass
    to define), with its internals behind names of ours.

    `lease_s`, when given, is the in-progress key's lifetime: the lease a claim sets and the worker renews.

    Between two polls the worker waits in `idle`: until `wake()` is called (work was signalled, a slot came
    free) or `poll_delay` has passed, whichever is first. arq's own wait between polls (its `poll_delay`) is
    set to none, so `poll_delay` is only the fallback for delayed jobs and lost signals.
    """

    def __init__(self, *, lease_s: float | None = None, poll_delay: float = 0.5, **options: Any) -> None:
        if options.get("cron_jobs"):
            raise ValueError("ArqWorker runs no arq cron jobs (Conveyor's schedules fire ordinary jobs)")
        super().__init__(poll_delay=0, **options)
        self.idle_s = poll_delay
        self._woken = asyncio.Event()
        if lease_s is not None:
            self.in_progress_timeout_s = lease_s
        self._finishes: GroupCommit[_Finish, None] = GroupCommit(self._write_finishes, max_in_flight=1)
        self._marked: set[str] = set()  # ids in arq's abort set at the last look, whether running here or not

    def wake(self) -> None:
        """End the current (or the next) wait between polls now."""
        self._woken.set()

    async def idle(self) -> None:
        """Wait between two polls: until `wake()` or `idle_s`, whichever is first."""
        if not self._woken.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.idle_s):
                    await self._woken.wait()
        self._woken.clear()

    def slot_freed(self) -> None:
        """A job taken by this worker has ended (its slot is free again); a subclass may `wake()` here."""

    def read_limit(self) -> int:
        """How many due ids the next poll reads, before arq's burst cap; arq's `queue_read_limit` unless told."""
        return self.queue_read_limit

    @abstractmethod
    async def due_ids(self, count: int) -> list[bytes]:
        """Up to `count` ids of due jobs, best first."""

    @abstractmethod
    async def claim(self, job_ids: list[str], *, free: int, lease_ms: int, now_ms: int) -> Sequence[ClaimedJob]:
        """Take up to `free` of `job_ids` for this worker (set their in-progress keys for `lease_ms`)."""

    async def _poll_iteration(self) -> None:
        count = self.read_limit()
        if self.burst and self.max_burst_jobs >= 0:
            remaining = self.max_burst_jobs - self._jobs_started()
            if remaining < 1:
                return
            count = min(remaining, count)
        if self.allow_pick_jobs and self.job_counter < self.max_jobs:
            await self.start_due(count)
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # as arq does: errors of run_job surface here
        await self.heart_beat()
        if self.allow_pick_jobs:  # draining: arq's main loop checks its burst exit right after this
            await self.idle()

    async def take(self, count: int, *, free: int, lease_ms: int, now_ms: int) -> Sequence[ClaimedJob]:
        """Read up to `count` due jobs and take up to `free` of them, in one step if the subclass can."""
        ids = await self.due_ids(count)
        if not ids:
            return ()
        return await self.claim([j.decode() for j in ids], free=free, lease_ms=lease_ms, now_ms=now_ms)

    def has_free_slot(self) -> bool:
        """Whether this worker would take another job now."""
        return self.job_counter < self.max_jobs

    async def start_due(self, count: int) -> None:
        """Take due jobs (`take`, up to `count` read) into the free slots and start them as arq starts them."""
        free = self.max_jobs - self.job_counter
        if free < 1:
            return
        lease_ms = int(self.in_progress_timeout_s * 1000)
        claimed = await self.take(count, free=free, lease_ms=lease_ms, now_ms=timestamp_ms())
        if not claimed:
            return
        for job, record in zip(claimed, await self._records(claimed), strict=True):
            job_id, score = job[0], job[1]
            await self.sem.acquire()  # never waits: arq sizes it max_jobs + 1 and at most `free` are taken
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, score, record=record))
            task.add_done_callback(self._job_ended)
            self.tasks[job_id] = task

    async def _records(self, claimed: Sequence[ClaimedJob]) -> list[bytes]:
        """The arq records of the jobs just taken, in their order: the ones the claim did not read, in one MGET
        (b"" for a record gone), rather than one GET per run."""
        unread = [job[0] for job in claimed if len(job) == 2]
        read = iter(await self.pool.mget([job_key_prefix + job_id for job_id in unread]) if unread else ())
        return [job[2] if len(job) == 3 else next(read) or b"" for job in claimed]

    def _job_ended(self, _: asyncio.Task[Any]) -> None:
        self._release_sem_dec_counter_on_complete()
        self.slot_freed()

    async def run_job(self, job_id: str, score: int, *, record: bytes | None = None) -> None:
        """Run one claimed job as arq does, with one GET before it (none when its `record` was read with the
        claim: `start_due`) and a grouped write after it.

        It returns only once the end of the run is written: a worker dying before that leaves the job queued
        with its lease running out, for another worker to take over (the ledger fences the outcome).
        """
        loaded = await self._load(job_id, record)
        if loaded is None:
            return
        job, function = loaded
        job_ctx = {"job_id": job_id, "job_try": job.job_try, "enqueue_time": ms_to_datetime(job.enqueue_ms)}
        ctx = {**self.ctx, **job_ctx, "score": score}
        if self.on_job_start:
            await self.on_job_start(ctx)
        start_ms = timestamp_ms()
        run = await self._call(job, function, ctx, score)
        finished_ms = timestamp_ms()
        marked = job_id in self.aborting_tasks or job_id in self._marked
        self.aborting_tasks.discard(job_id)
        forever = self.keep_result_forever if function.keep_result_forever is None else function.keep_result_forever
        keep_s = self.keep_result_s if function.keep_result_s is None else function.keep_result_s
        kept = None
        if run.result is not _NO_RESULT and (forever or keep_s > 0):
            kept = serialize_result(
                job.name, job.args, job.kwargs, job.job_try, job.enqueue_ms, run.success, run.result, start_ms,
                finished_ms, f"{job_id}:{job.name}", self.queue_name, job_id=job_id, serializer=self.job_serializer,
            )  # fmt: skip
        if self.on_job_end:
            await self.on_job_end(ctx)
        px = None if forever else to_ms(keep_s)
        await self._finishes.submit(_Finish(job_id, run.done, kept, px, run.incr_score, marked))
        if self.after_job_end:
            await self.after_job_end(ctx)

    async def _load(self, job_id: str, record: bytes | None) -> tuple[_Job, Function] | None:
        """The job's record (one GET, unless the claim read it) and its function; None once a job that cannot
        run is finished as failed, as arq finishes it. arq's retry counter is not kept: the ledger counts
        attempts, and `job_try` is the one the job was enqueued with."""
        start_ms = timestamp_ms()
        raw = record if record is not None else await self.pool.get(job_key_prefix + job_id)
        if not raw:
            logger.warning("arq.job_gone", extra={"arq_id": job_id})
            await self._fail_unrun(_Job(job_id, start_ms), JobExecutionFailed("job expired"))
            return None
        try:
            name, args, kwargs, enqueue_try, enqueue_ms = deserialize_job_raw(raw, deserializer=self.job_deserializer)
        except SerializationError as exc:
            logger.warning("arq.job_unreadable", extra={"arq_id": job_id})
            await self._fail_unrun(_Job(job_id, start_ms), exc)
            return None
        job = _Job(job_id, start_ms, name, args, kwargs, enqueue_try or 1, enqueue_ms)
        function = self.functions.get(name)
        if not isinstance(function, Function):
            logger.warning("arq.function_unknown", extra={"arq_id": job_id})
            await self._fail_unrun(job, JobExecutionFailed(f"function {name!r} not found"))
            return None
        max_tries = self.max_tries if function.max_tries is None else function.max_tries
        if job.job_try > max_tries:
            logger.warning("arq.max_tries_exceeded", extra={"arq_id": job_id, "max_tries": max_tries})
            await self._fail_unrun(job, JobExecutionFailed(f"max {max_tries} retries exceeded"))
            return None
        return job, function

    async def _call(self, job: _Job, function: Function, ctx: dict[Any, Any], score: int) -> _Run:
        """The function's run, as arq runs it: a task in `job_tasks` (where a cancel finds it) under arq's timeout."""
        job_id = job.job_id
        timeout_s = self.job_timeout_s if function.timeout_s is None else function.timeout_s
        try:
            self.job_tasks[job_id] = task = self.loop.create_task(function.coroutine(ctx, *job.args, **job.kwargs))
            try:
                async with asyncio.timeout(timeout_s):  # as arq's wait_for, without its extra future per run
                    result = await task
            finally:
                del self.job_tasks[job_id]
        except (Exception, asyncio.CancelledError) as exc:
            if self.retry_jobs and isinstance(exc, Retry):
                self.jobs_retried += 1
                # arq's move: `defer` from now, whatever the score was (a banded score stays in its band)
                return _Run(incr_score=exc.defer_score + (timestamp_ms() - score) if exc.defer_score else None)
            if job_id in self.aborting_tasks and isinstance(exc, asyncio.CancelledError):
                self.jobs_failed += 1
                return _Run(result=exc, done=True)
            if self.retry_jobs and isinstance(exc, asyncio.CancelledError | RetryJob):
                self.jobs_retried += 1  # a shutdown: the job stays queued, for another worker
                return _Run()
            logger.error("arq.job_failed", extra={"arq_id": job_id}, exc_info=exc)
            self.jobs_failed += 1
            return _Run(result=exc, done=True)
        self.jobs_complete += 1
        return _Run(result=result, done=True, success=True)

    async def _fail_unrun(self, job: _Job, exc: BaseException) -> None:
        """A job that could not be run (its record gone or unreadable, its function unknown): finished as failed,
        as arq finishes it."""
        self.jobs_failed += 1
        record = None
        if self.keep_result_forever or self.keep_result_s > 0:
            record = serialize_result(
                job.name, job.args, job.kwargs, job.job_try, job.enqueue_ms, False, exc, job.start_ms,
                timestamp_ms(), f"{job.job_id}:{job.name}", self.queue_name, job_id=job.job_id,
                serializer=self.job_serializer,
            )  # fmt: skip
        px = None if self.keep_result_forever else to_ms(self.keep_result_s)
        await self._finishes.submit(_Finish(job.job_id, True, record, px, marked=True))

    async def _write_finishes(self, finishes: Sequence[_Finish]) -> list[None]:
        """The ends of many runs in one round trip (a pipeline, no MULTI).

        No MULTI is needed because of the order: a finished job leaves the queue first (from then on no claim
        can take it), then its result is stored, and its record and lease go last; a job that runs again is
        moved in the queue before its lease goes. Whoever reads between two steps sees a consistent job.
        """
        done = [f.job_id for f in finishes if f.done]
        marked = [f.job_id for f in finishes if f.marked]
        keys = [in_progress_key_prefix + f.job_id for f in finishes] + [job_key_prefix + j for j in done]
        async with self.pool.pipeline(transaction=False) as pipe:
            if done:
                pipe.zrem(self.queue_name, *done)
            for f in finishes:
                if f.done and f.result is not None:
                    pipe.set(result_key_prefix + f.job_id, f.result, px=f.result_px)
                elif not f.done and f.incr_score:
                    pipe.zincrby(self.queue_name, f.incr_score, f.job_id)
            if marked:
                pipe.zrem(abort_jobs_ss, *marked)
            pipe.delete(*keys)
            await pipe.execute()
        self._marked.difference_update(marked)
        return [None] * len(finishes)

    @property
    def finish_writes(self) -> int:
        """How many round trips the ends of runs have taken so far (each carries a group of them)."""
        return self._finishes.groups

    async def _cancel_aborted_jobs(self) -> None:
        """arq's cancel of running jobs named in its abort set, cheaper: it looks only while a job's function
        runs here (arq cancels nothing else), with one ZRANGE; a marker goes with that job's finish."""
        if not self.job_tasks:
            return
        self._marked = {m.decode() for m in await self.pool.zrange(abort_jobs_ss, 0, -1)}
        for job_id in (self._marked & self.job_tasks.keys()) - self.aborting_tasks:
            self.aborting_tasks.add(job_id)
            self.job_tasks[job_id].cancel()

    async def poll_once(self) -> None:
        """One round of arq's loop: take due jobs, honour cancels, forget finished tasks, beat."""
        await self._poll_iteration()

    @property
    def jobs_redis(self) -> ArqRedis:
        return self.pool

    @property
    def running(self) -> Mapping[str, asyncio.Task[Any]]:
        """The jobs taken and not yet forgotten (by id), in the order taken."""
        return self.tasks

    def running_job_ids(self) -> list[str]:
        """The jobs whose function is running now: the ones whose lease must be renewed."""
        return list(self.job_tasks)

    @property
    def taking_jobs(self) -> bool:
        return self.allow_pick_jobs

    @property
    def has_started(self) -> bool:
        return self.main_task is not None

    @property
    def completed(self) -> int:
        return self.jobs_complete

    async def forget_health_check(self) -> None:
        """Delete arq's health-check record of this worker (a stopped worker must not look alive)."""
        await self.pool.delete(self.health_check_key)

    async def cancel_aborted(self) -> None:
        """Cancel the running jobs named in arq's abort set (arq does it only while it takes jobs)."""
        await self._cancel_aborted_jobs()

    def drain(self) -> None:
        """Take no more jobs, and end arq's main loop once the running ones are over: a zero-job burst, where
        arq's own signal path would cancel its main task mid-poll (which can leave it waiting forever)."""
        self.allow_pick_jobs = False
        self.burst, self.max_burst_jobs = True, 0
        self.wake()

    def interrupt(self) -> None:
        """Cancel every job still running; arq gives each attempt back to the queue."""
        for task in self.tasks.values():
            if not task.done():
                task.cancel()

    async def wait_running(self) -> None:
        """Until every job taken has ended, however it ends, and the ends of their runs are written (a run
        cancelled while its end was being written leaves that write in flight: it completes before the pools
        close)."""
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self._finishes.close()
