"""EventHub: one Redis pattern subscription per gateway process, fanned out to this process's event streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

from shared.core import json
from shared.core.settings import RedisConfig
from shared.infra import events
from shared.infra.redis import REDIS_ERRORS, cache_client

logger = logging.getLogger(__name__)

INBOX_SIZE = 256
SHUTDOWN: dict[str, Any] = {"kind": "shutdown"}
# Sent to every stream when the subscription is (re)established: what was published while it was down is
# lost, so a job stream re-reads the ledger.
RESYNC: dict[str, Any] = {"kind": "resync"}
PATTERNS = (events.PATTERN, events.NOTIFICATION_PATTERN)


class EventHub:
    """Streams listen by channel (a job's, or a principal's notifications); a slow stream loses progress ticks,
    never the end (it re-reads the ledger)."""

    def __init__(self, config: RedisConfig) -> None:
        self._config = config
        self._inboxes: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self._closing = False
        self._subscribed = asyncio.Event()
        # Open streams per principal in this process (gateway.http.sse's cap while the cache is unreachable).
        self.streams_by_principal: Counter[str] = Counter()

    @property
    def listeners(self) -> int:
        return sum(len(boxes) for boxes in self._inboxes.values())

    async def subscribed(self, timeout_s: float) -> bool:
        """Wait (at most `timeout_s`) until Redis confirmed the subscription: from then on nothing published
        is missed. False while Redis is unreachable; a stream opened then still works once it is back."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout_s)
        return self._subscribed.is_set()

    def listen(self, job_id: str) -> contextlib.AbstractContextManager[asyncio.Queue[dict[str, Any]]]:
        """The events of one job."""
        return self._listen(events.channel(job_id))

    def listen_notifications(self, user: str) -> contextlib.AbstractContextManager[asyncio.Queue[dict[str, Any]]]:
        """The notifications pushed to one principal."""
        return self._listen(events.notification_channel(user))

    @contextlib.contextmanager
    def _listen(self, channel: str) -> Iterator[asyncio.Queue[dict[str, Any]]]:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(INBOX_SIZE)
        if self._closing:
            inbox.put_nowait(SHUTDOWN)
        self._inboxes.setdefault(channel, set()).add(inbox)
        try:
            yield inbox
        finally:
            boxes = self._inboxes.get(channel, set())
            boxes.discard(inbox)
            if not boxes:
                self._inboxes.pop(channel, None)

    def close(self) -> None:
        """Ask every open stream to end (gateway shutdown): clients reconnect to another replica."""
        self._closing = True
        self._broadcast(SHUTDOWN)

    def dispatch(self, channel: str, event: dict[str, Any]) -> None:
        for inbox in self._inboxes.get(channel, ()):
            self._offer(inbox, event)

    def _broadcast(self, event: dict[str, Any]) -> None:
        for boxes in self._inboxes.values():
            for inbox in boxes:
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
                    self.dispatch(channel, event)
            except REDIS_ERRORS as exc:
                logger.warning("events.subscription_lost", extra={"reason": type(exc).__name__})
            finally:
                self._subscribed.clear()
            await asyncio.sleep(1.0)

    async def _subscription(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        client = cache_client(self._config, subscriber=True)
        pubsub = client.pubsub()
        confirmed = 0
        try:
            await pubsub.psubscribe(*PATTERNS)
            async for message in pubsub.listen():
                kind = message.get("type")
                if kind == "psubscribe":
                    confirmed += 1
                    if confirmed == len(PATTERNS):
                        self._subscribed.set()
                        self._broadcast(RESYNC)
                elif kind == "pmessage":
                    channel = message["channel"]
                    yield (
                        (channel.decode() if isinstance(channel, bytes) else str(channel)),
                        json.loads(message["data"]),
                    )
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py 5 leaves PubSub.aclose unannotated
            await client.aclose()
