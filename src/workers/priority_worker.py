"""arq's worker with Conveyor's read of due jobs and its one-call claim through the queue's start gate."""

from __future__ import annotations

import time
from typing import Any, Final

from shared.infra.broker import due_job_ids
from shared.infra.claim import claim as claim_due
from workers.arq_seam import ArqWorker, ClaimedJob

# After parking jobs (their owners had used their share), the next read goes this many times deeper, so the
# jobs of other owners behind a long backlog come into view within a few polls. Each job is parked once.
DEEP_READ: Final = 4
# When a claim took nothing and passed over due jobs without parking any, every due job in Redis belongs to
# an owner that has used its share (the claim serves every other owner's parked jobs itself): whoever else
# waits in the ledger cannot be served now (not in Redis yet, or held by its type's limits), and a slot must
# not idle for it. The shares are set aside this long.
SHARES_ASIDE_S: Final = 0.5


class PriorityWorker(ArqWorker):
    """arq's worker, reading due jobs high priority first and taking them through the queue's start gate.

    The read (`shared.infra.broker.due_job_ids`) goes by priority band, where arq's would order jobs by score
    alone. The claim (`shared.infra.claim.claim`) takes the jobs with one Lua call instead of a WATCH/MULTI
    round per job: the same checks as arq's, plus the queue's pause gate, atomically, so a job never starts
    once a pause has reached Redis, whatever this worker read before; and each owner's fair share of the
    queue's slots (`shared.infra.fair_share`), parking the jobs of an owner that has used its share. How they
    replace arq's own is in `workers.arq_seam`.
    """

    def __init__(self, *, gate_queue: str, **options: Any) -> None:
        super().__init__(**options)
        self.gate_queue = gate_queue  # the queue's name (not its arq key): whose pause gate every claim checks
        self._deep = False  # the last claim parked jobs: read deeper
        self._shares_aside_until = 0.0

    def read_limit(self) -> int:
        return self.queue_read_limit * (DEEP_READ if self._deep else 1)

    async def due_ids(self, count: int) -> list[bytes]:
        return await due_job_ids(self.jobs_redis, self.queue_name, limit=count)

    async def claim(self, job_ids: list[str], *, free: int, lease_ms: int, now_ms: int) -> tuple[ClaimedJob, ...]:
        claimed = await claim_due(
            self.jobs_redis, self.queue_name, self.gate_queue, job_ids, limit=free, lease_ms=lease_ms,
            now_ms=now_ms, shares=time.monotonic() >= self._shares_aside_until,
        )  # fmt: skip
        self._deep = claimed.parked > 0
        if claimed.held and not claimed.parked and not claimed.jobs:
            self._shares_aside_until = time.monotonic() + SHARES_ASIDE_S
        return claimed.jobs
