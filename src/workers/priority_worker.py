"""arq's worker with Conveyor's read of due jobs and its one-call claim through the queue's start gate."""

from __future__ import annotations

import time
from typing import Any, Final

from arq.utils import timestamp_ms
from arq.worker import Worker

from shared.infra.broker import due_job_ids
from shared.infra.claim import claim

# After parking jobs (their owners had used their share), the next read goes this many times deeper, so the
# jobs of other owners behind a long backlog come into view within a few polls. Each job is parked once.
DEEP_READ: Final = 4
# When a claim took nothing and passed over due jobs without parking any, every due job in Redis belongs to
# an owner that has used its share (the claim serves every other owner's parked jobs itself): whoever else
# waits in the ledger cannot be served now (not in Redis yet, or held by its type's limits), and a slot must
# not idle for it. The shares are set aside this long.
SHARES_ASIDE_S: Final = 0.5


class PriorityWorker(Worker):
    """arq's worker, reading due jobs high priority first and taking them through the queue's start gate.

    Two of arq 0.28's methods (pinned) are replaced. `_poll_iteration` differs only in its read of due ids
    (`shared.infra.broker.due_job_ids`): arq reads the front of its sorted set, which would order jobs by score
    alone. `start_jobs` takes the jobs with one Lua call (`shared.infra.claim.claim`) instead of a WATCH/MULTI
    round per job: the same checks as arq's, plus the queue's pause gate, atomically, so a job never starts
    once a pause has reached Redis, whatever this worker read before; and each owner's fair share of the
    queue's slots (`shared.infra.fair_share`), parking the jobs of an owner that has used its share.
    """

    def __init__(self, *, gate_queue: str, **options: Any) -> None:
        super().__init__(**options)
        self.gate_queue = gate_queue  # the queue's name (not its arq key): whose pause gate every claim checks
        self._deep = False  # the last claim parked jobs: read deeper
        self._shares_aside_until = 0.0

    async def _poll_iteration(self) -> None:
        count = self.queue_read_limit * (DEEP_READ if self._deep else 1)
        if self.burst and self.max_burst_jobs >= 0:
            remaining = self.max_burst_jobs - self._jobs_started()
            if remaining < 1:
                return
            count = min(remaining, count)
        if self.allow_pick_jobs and self.job_counter < self.max_jobs:
            await self.start_jobs(await due_job_ids(self.pool, self.queue_name, limit=count))
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # as arq does: errors of run_job surface here
        await self.heart_beat()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        free = self.max_jobs - self.job_counter
        if free < 1 or not job_ids:
            return
        claimed = await claim(
            self.pool, self.queue_name, self.gate_queue, [j.decode() for j in job_ids],
            limit=free, lease_ms=int(self.in_progress_timeout_s * 1000), now_ms=timestamp_ms(),
            shares=time.monotonic() >= self._shares_aside_until,
        )  # fmt: skip
        self._deep = claimed.parked > 0
        if claimed.held and not claimed.parked and not claimed.jobs:
            self._shares_aside_until = time.monotonic() + SHARES_ASIDE_S
        for job_id, score in claimed.jobs:
            await self.sem.acquire()  # never waits: arq sizes it max_jobs + 1 and at most `free` are taken
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task
