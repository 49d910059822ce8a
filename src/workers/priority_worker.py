"""arq's worker with Conveyor's one-call read and claim of due jobs through the start gate, woken by enqueues."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final

from shared.infra.broker import due_job_ids
from shared.infra.claim import claim as claim_due
from workers.arq_seam import ArqWorker, ClaimedJob

# After parking jobs (their owners had used their share), the next read goes this many times deeper, so the
# jobs of other owners behind a long backlog come into view within a few polls. Each job is parked once.
DEEP_READ: Final = 4
# When a claim took nothing and passed over due jobs without parking any, every due job in Redis belongs to
# an owner that has used its share (the claim serves every other owner's parked jobs itself):
# whoever else waits in the ledger cannot be served now (not in Redis yet, or held by its type's limits), and
# a slot must not idle for it. The shares are set aside this long, or until a wake-up signal says a job was
# enqueued (it may be an owner's under its share, which must get the next free slot, not wait this out).
SHARES_ASIDE_S: Final = 0.5


class PriorityWorker(ArqWorker):
    """arq's worker, reading due jobs high priority first and taking them through the queue's start gate.

    One Lua call per poll (`shared.infra.claim.claim`) reads the due jobs by priority band, where arq's would
    order them by score alone, and takes them, instead of arq's read and a WATCH/MULTI round per job: the same
    checks as arq's, plus the queue's pause gate, atomically, so a job never starts once a pause has reached
    Redis; and each owner's fair share of the queue's slots (`shared.infra.fair_share`), parking the jobs of an
    owner that has used its share. How they replace arq's own is in `workers.arq_seam`.

    Between polls the worker waits until it is woken: by a wake-up signal (`signal`, from the queue's
    subscription, `shared.infra.wakeup`) while it has a free slot; by a job ending when the last claim may have
    left due jobs behind (it filled every free slot); by new shares when the last claim held jobs back; at once
    when the last claim left slots free after parking jobs (the read ended in that backlog) or after setting the
    shares aside (`SHARES_ASIDE_S`). An empty queue costs no poll per finished job; the poll every `idle_s` stays
    the fallback (delayed jobs, lost signals).
    """

    def __init__(self, *, gate_queue: str, **options: Any) -> None:
        super().__init__(**options)
        self.gate_queue = gate_queue  # the queue's name (not its arq key): whose pause gate every claim checks
        self._deep = False  # the last claim parked jobs: read deeper
        self._shares_aside_until = 0.0
        self._signals = 0  # wake-up signals so far: a claim under way when one comes does not set the shares aside
        self._more = False  # the last claim may have left due jobs behind: a freed slot polls at once
        self._held = False  # the last claim held jobs back for their owners' shares

    def signal(self) -> None:
        """A job may be due on the queue: poll now if a slot is free, else as soon as one frees; either way with
        the shares weighed again (the new job may be an owner's under its share)."""
        self._shares_aside_until = 0.0
        self._signals += 1
        if self.has_free_slot():
            self.wake()
        else:
            self._more = True

    def slot_freed(self) -> None:
        if self._more:
            self.wake()

    def shares_published(self) -> None:
        """The owners' shares were published again: jobs the last claim held back may start now."""
        if self._held:
            self.wake()

    def read_limit(self) -> int:
        return self.queue_read_limit * (DEEP_READ if self._deep else 1)

    async def due_ids(self, count: int) -> list[bytes]:
        """The read on its own (a poll reads in `take`, with the claim)."""
        return await due_job_ids(self.jobs_redis, self.queue_name, limit=count)

    async def claim(self, job_ids: list[str], *, free: int, lease_ms: int, now_ms: int) -> Sequence[ClaimedJob]:
        """The claim of ids read before (a poll reads in `take`, with the claim)."""
        return await self._claim(job_ids, 0, free=free, lease_ms=lease_ms, now_ms=now_ms)

    def _unfinished(self) -> list[str]:
        """The jobs this worker has taken and not yet finished: they hold their leases, no claim can take them."""
        return [job_id for job_id, task in self.running.items() if not task.done()]

    async def take(self, count: int, *, free: int, lease_ms: int, now_ms: int) -> Sequence[ClaimedJob]:
        """Read up to `count` due jobs and take up to `free` of them: one call."""
        return await self._claim((), count, free=free, lease_ms=lease_ms, now_ms=now_ms)

    async def _claim(
        self, job_ids: Sequence[str], read: int, *, free: int, lease_ms: int, now_ms: int
    ) -> Sequence[ClaimedJob]:
        signals = self._signals
        claimed = await claim_due(
            self.jobs_redis, self.queue_name, self.gate_queue, job_ids, read=read, limit=free, lease_ms=lease_ms,
            now_ms=now_ms, shares=time.monotonic() >= self._shares_aside_until, running=self._unfinished(),
        )  # fmt: skip
        self._deep = claimed.parked > 0
        # A freed slot polls at once only if this claim filled every free slot: jobs it held back for their
        # owners' shares cannot start on a freed slot (an owner's allowance grows only when the shares are
        # published again, `shares_published`), and walking them again on every job's end would cost a read of
        # each held job's owner per finished job.
        self._more = len(claimed.jobs) >= free
        self._held = claimed.held > 0
        if len(claimed.jobs) < free:
            if claimed.parked:
                # The read ended inside a backlog it parked: the jobs behind it are in the next read's view now,
                # and a free slot must not wait for the fallback poll to look at them.
                self.wake()
            elif claimed.held:
                # Nothing left in Redis can use the free slots under the shares: fill them now, shares aside once
                # a claim takes nothing (this one, or the next, at once); unless a job was signalled while this
                # claim ran (it may not have seen that job).
                if not claimed.jobs and self._signals == signals:
                    self._shares_aside_until = time.monotonic() + SHARES_ASIDE_S
                self.wake()
        return claimed.jobs
