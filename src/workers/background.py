"""Periodic background work of a worker process: a loop no error can end, each failure logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from shared.db import UNAVAILABLE_ERRORS
from shared.queue import REDIS_ERRORS

logger = logging.getLogger(__name__)


async def pause(seconds: float, until: asyncio.Event) -> bool:
    """Sleep `seconds`, or less if `until` is set; True once it is (the loop should end)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(until.wait(), seconds)
    return until.is_set()


async def every(interval_s: float, step: Callable[[], Awaitable[object]], *, name: str, until: asyncio.Event) -> None:
    """Run `step` now and then every `interval_s` until `until` is set; outages are logged and waited out.

    A loop ends between steps, never in the middle of one: cancelling a driver call half-way (an asyncpg
    query, a Redis reply) can take long on a loaded server and leave a connection behind.
    """
    while True:
        try:
            await step()
        except (*REDIS_ERRORS, *UNAVAILABLE_ERRORS) as exc:
            logger.warning(f"{name}.unavailable", extra={"reason": type(exc).__name__})
        except Exception:  # a background loop's boundary: log it in full and try again next tick
            logger.exception(f"{name}.failed")
        if await pause(interval_s, until):
            return
