"""A worker's status announcements, grouped: the statuses its jobs reach at the same moment go in one pipeline.

Every start and every outcome is announced on the job's channel (`shared.infra.events`) so event streams show it
at once; per job that is two round trips to the cache, about as much worker CPU as its two ledger writes. As
with the ledger writes (`workers.outcomes`), each job waits for its own announcement, so a job's statuses
still go out in the order it reached them; only the round trips are shared. Announcing stays best effort: the
caller decides what a cache error means (for a job, nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.core import json
from shared.infra import events
from shared.infra.group_commit import GroupCommit
from shared.infra.redis import CacheRedis

# A group's pipeline holds one cache connection; a second in flight overlaps one round trip with the next
# group's encoding, more would only make the groups smaller.
MAX_IN_FLIGHT = 2
MAX_ITEMS = 500


class GroupedAnnouncements:
    """`events.publish_status` for the jobs of one worker process, many per round trip."""

    def __init__(self, cache: CacheRedis) -> None:
        self._cache = cache
        self.statuses: GroupCommit[tuple[str, str], None] = GroupCommit(
            self._publish_many, max_items=MAX_ITEMS, max_in_flight=MAX_IN_FLIGHT
        )

    async def publish_status(self, job_id: str, status: str) -> None:
        """As `events.publish_status`: a run that starts, or a job sent back to the queue, clears its progress."""
        await self.statuses.submit((job_id, status))

    async def close(self) -> None:
        await self.statuses.close()

    async def _publish_many(self, statuses: Sequence[tuple[str, str]]) -> Sequence[None]:
        async with self._cache.pipeline(transaction=False) as pipe:
            for job_id, status in statuses:
                if status in ("running", "queued"):
                    pipe.delete(events.PROGRESS_PREFIX + job_id)
                pipe.publish(events.channel(job_id), json.dumps({"kind": "status", "status": status}))
            await pipe.execute()
        return [None] * len(statuses)
