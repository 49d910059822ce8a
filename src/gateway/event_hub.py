"""EventHub: one Redis pattern subscription per gateway process, fanned out to this process's event streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from shared import events, json
from shared.queue import REDIS_ERRORS
from shared.redis import cache_client
from shared.settings import RedisConfig

logger = logging.getLogger(__name__)

INBOX_SIZE = 256
SHUTDOWN: dict[str, Any] = {"kind": "shutdown"}


class EventHub:
    """Streams listen by job id; a slow stream loses progress ticks, never the end (it re-reads the ledger)."""

    def __init__(self, config: RedisConfig) -> None:
        self._config = config
        self._inboxes: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self._closing = False

    @property
    def listeners(self) -> int:
        return sum(len(boxes) for boxes in self._inboxes.values())

    @contextlib.contextmanager
    def listen(self, job_id: str) -> Iterator[asyncio.Queue[dict[str, Any]]]:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(INBOX_SIZE)
        if self._closing:
            inbox.put_nowait(SHUTDOWN)
        self._inboxes.setdefault(job_id, set()).add(inbox)
        try:
            yield inbox
        finally:
            boxes = self._inboxes.get(job_id, set())
            boxes.discard(inbox)
            if not boxes:
                self._inboxes.pop(job_id, None)

    def close(self) -> None:
        """Ask every open stream to end (gateway shutdown): clients reconnect to another replica."""
        self._closing = True
        for boxes in self._inboxes.values():
            for inbox in boxes:
                self._offer(inbox, SHUTDOWN)

    def dispatch(self, job_id: str, event: dict[str, Any]) -> None:
        for inbox in self._inboxes.get(job_id, ()):
            self._offer(inbox, event)

    @staticmethod
    def _offer(inbox: asyncio.Queue[dict[str, Any]], event: dict[str, Any]) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            inbox.put_nowait(event)

    async def run(self) -> None:
        """Subscribe and dispatch until cancelled; a Redis outage is waited out (streams re-read the ledger)."""
        while True:
            try:
                async for channel, event in self._subscription():
                    self.dispatch(events.job_id_of(channel), event)
            except REDIS_ERRORS as exc:
                logger.warning("events.subscription_lost", extra={"reason": type(exc).__name__})
            await asyncio.sleep(1.0)

    async def _subscription(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        client = cache_client(self._config, subscriber=True)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.psubscribe(events.PATTERN)
            async for message in pubsub.listen():
                if message.get("type") == "pmessage":
                    channel = message["channel"]
                    yield (
                        (channel.decode() if isinstance(channel, bytes) else str(channel)),
                        json.loads(message["data"]),
                    )
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py 5 leaves PubSub.aclose unannotated
            await client.aclose()
