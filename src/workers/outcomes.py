"""A worker's starts and successes, group-committed: the two ledger writes every job makes.

Each running job of a process waits on its own write, and the writes of the jobs finishing or starting at the
same moment go out as one statement and one commit (`shared.infra.group_commit`). A job is acknowledged to arq
only once the group that carried its write has committed, as before; only the commits are shared. The rarer
transitions (failures, retries, deferrals, requeues) stay single-row in `shared.ledger.records`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.infra.db import Pool
from shared.infra.group_commit import GroupCommit
from shared.ledger import records
from shared.ledger.records import JobRecord

# A group holds at most this many jobs (at most a process's running jobs ever wait at once anyway): a bound on
# one statement's size, far above what a drain of one process gathers.
MAX_ITEMS = 500


class GroupedOutcomes:
    """Starts and successes of one worker process, each through its own GroupCommit on the process's pool."""

    def __init__(self, pg: Pool, *, pool_max: int, max_jobs: int) -> None:
        # A group in flight holds one pooled connection for its statement. A quarter of the pool for each kind
        # (at least one) leaves the other half to the handlers, the control loop and the single-row writes; a
        # second group in flight lets one commit's flush overlap the next group's statement. More in flight would
        # only split the waiting jobs into smaller groups, not write them sooner.
        in_flight = max(1, pool_max // 4)
        size = max(1, min(max_jobs, MAX_ITEMS))
        self._pg = pg
        self.starts: GroupCommit[tuple[str, int], JobRecord | None] = GroupCommit(
            self._start_many, max_items=size, max_in_flight=in_flight
        )
        self.successes: GroupCommit[tuple[JobRecord, Any], bool] = GroupCommit(
            self._succeed_many, max_items=size, max_in_flight=in_flight
        )

    async def start(self, job_id: str, generation: int) -> JobRecord | None:
        """`records.mark_running`, with the other jobs starting now."""
        return await self.starts.submit((job_id, generation))

    async def succeed(self, run: JobRecord, result: Any) -> bool:
        """`records.mark_succeeded`, with the other jobs finishing now."""
        return await self.successes.submit((run, result))

    async def close(self) -> None:
        """Write what is waiting and wait for the groups in flight (before the pool closes)."""
        await self.starts.close()
        await self.successes.close()

    async def _start_many(self, starts: Sequence[tuple[str, int]]) -> Sequence[JobRecord | None]:
        return await records.mark_running_many(self._pg, starts)

    async def _succeed_many(self, outcomes: Sequence[tuple[JobRecord, Any]]) -> Sequence[bool]:
        return await records.mark_succeeded_many(self._pg, outcomes)
