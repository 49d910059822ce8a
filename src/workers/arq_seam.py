"""The one module of Conveyor that knows arq's worker from the inside; the rest calls it by names of ours.

arq 0.28.0 (pinned in pyproject) gives no hook for how a worker reads and claims due jobs, nor for stopping it
without cancelling its main task, so `ArqWorker` replaces two of its methods and reads its private state:

- `_poll_iteration`: arq's own, line for line, except that the due ids come from `due_ids` (ours) and the read
  window from `read_limit` (ours) instead of a `zrangebyscore` over the front of the sorted set;
- `start_jobs`: the jobs are taken by `claim` (ours) in one call instead of a WATCH/MULTI round per job, then
  started exactly as arq starts them (`sem`, `job_counter`, `tasks`, `run_job`, `loop`,
  `_release_sem_dec_counter_on_complete`);
- arq's state behind names of ours: `running` (`tasks`), `running_job_ids` (`job_tasks`), `taking_jobs`
  (`allow_pick_jobs`), `has_started` (`main_task`), `completed` (`jobs_complete`), `jobs_redis` (`pool`),
  `cancel_aborted` (`_cancel_aborted_jobs`), `forget_health_check` (`health_check_key`), `drain`
  (`allow_pick_jobs`, the burst switches), `interrupt`, and the lease (`in_progress_timeout_s`), set at
  construction; `job_score` reads the `score` arq puts in a job's ctx.

arq's read passes `start=self._queue_read_offset`; ours passes none (`shared.infra.broker.due_job_ids` reads
each window with `start=0`). That is no drift: arq 0.28 sets `_queue_read_offset = 0` in `Worker.__init__`,
never changes it, and takes no parameter for it, so arq itself always reads from the head of its sorted set.
We keep reading from the head on purpose: our read is several windows (high, normal and low priority, then
the parked jobs), and one offset shared by all of them would skip the first due jobs of each window, the most
urgent ones, while the claim script already serves each job once, atomically, whoever reads it too. Should a
later arq start moving the offset, `tests/unit/test_arq_pin.py` says so.

That test holds a digest of the source of every arq member this module replaces, calls or reads, derived
from this module's own code (plus `RELIED_ON`, what it depends on without naming it), and names each one that
changed in an installed arq, with what to re-read. Only this module imports `arq.worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Final

from arq.connections import ArqRedis
from arq.utils import timestamp_ms
from arq.worker import Function, Retry, Worker, func

__all__ = ["RELIED_ON", "ArqWorker", "ClaimedJob", "Function", "Retry", "func", "job_score"]

# A job taken by a claim: its id and its score in arq's sorted set, as arq's `run_job` takes them.
ClaimedJob = tuple[str, int]

# arq members this module depends on without naming them, and why: each is pinned by the tripwire test too.
RELIED_ON: Final[Mapping[str, str]] = {
    "main": "`drain` ends arq's main loop through its burst branch: with max_burst_jobs 0 it must wait for the"
    " running tasks and return, with no cancellation",
    "async_run": "workers.processes runs the loop with it (again after a Redis error): it must set main_task"
    " (`has_started`) and return when main returns",
    "run_job": "`start_jobs` starts claimed jobs with it, as arq's own start_jobs does: it must take the id and"
    " score, honour the in-progress key `claim` set, and put `score` in the job's ctx (`job_score`)",
}


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
        super().__init__(poll_delay=0, **options)
        self.idle_s = poll_delay
        self._woken = asyncio.Event()
        if lease_s is not None:
            self.in_progress_timeout_s = lease_s

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
            await self.start_jobs(await self.due_ids(count))
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # as arq does: errors of run_job surface here
        await self.heart_beat()
        if self.allow_pick_jobs:  # draining: arq's main loop checks its burst exit right after this
            await self.idle()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        free = self.max_jobs - self.job_counter
        if free < 1 or not job_ids:
            return
        lease_ms = int(self.in_progress_timeout_s * 1000)
        claimed = await self.claim([j.decode() for j in job_ids], free=free, lease_ms=lease_ms, now_ms=timestamp_ms())
        for job_id, score in claimed:
            await self.sem.acquire()  # never waits: arq sizes it max_jobs + 1 and at most `free` are taken
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(self._job_ended)
            self.tasks[job_id] = task

    def _job_ended(self, _: asyncio.Task[Any]) -> None:
        self._release_sem_dec_counter_on_complete()
        self.slot_freed()

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
        """Until every job taken has ended, however it ends."""
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
