"""Wake-up signals: an enqueue tells the idle workers of its queue that a job is due, so none waits for its poll.

A signal is a PUBLISH on the queue's channel, sent by the enqueue script itself (`shared.infra.broker`) and by the
gate when a queue opens (`shared.infra.claim`). Each worker process holds one subscription (a connection of its
own) and wakes its worker on every message. Signals carry nothing and may be lost (no subscriber yet, a dropped
connection, Redis restarting): the worker's poll every WORKER_POLL_DELAY_S stays the fallback, and after every
(re)subscription the worker looks once, for whatever was signalled while nobody listened.

Pub/sub channels are not scoped to a Redis database, so the channel names the jobs database: deployments (or test
sessions) sharing a server do not wake each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

CHANNEL_PREFIX: Final = "conveyor:wake:"
# How long one read of the subscription waits for a message before it checks whether to stop.
LISTEN_S: Final = 0.5
# After losing the subscription, the first wait before subscribing again, doubled up to RETRY_MAX_S.
RETRY_MIN_S: Final = 0.05
RETRY_MAX_S: Final = 2.0


def channel(redis: Redis, queue: str) -> str:
    """The wake-up channel of `queue` in the database `redis` is connected to."""
    db = redis.connection_pool.connection_kwargs.get("db", 0)
    return f"{CHANNEL_PREFIX}{db}:{queue}"


async def listen(redis: Redis, queue: str, on_signal: Callable[[], None], *, until: asyncio.Event) -> None:
    """Call `on_signal` for every wake-up signal of `queue`, and once after every (re)subscription, until `until`
    is set. A lost connection (Redis restarting, CLIENT KILL) is subscribed again, with a growing pause while Redis
    stays away; nothing here waits on Redis at start-up, so a worker starts whether or not Redis answers."""
    name = channel(redis, queue)
    delay = RETRY_MIN_S
    while not until.is_set():
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(name)
            while not until.is_set():
                # Every message counts, the subscription's confirmation too: redis-py subscribes again by itself
                # after a dropped connection, and whatever was signalled in between must be looked for.
                if await pubsub.get_message(timeout=LISTEN_S) is not None:
                    delay = RETRY_MIN_S
                    on_signal()
        except (RedisError, OSError) as exc:
            logger.warning("worker.wakeup_lost", extra={"reason": type(exc).__name__})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), delay)
            delay = min(delay * 2, RETRY_MAX_S)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
