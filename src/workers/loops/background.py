"""Periodic background work of a worker process: a loop no error can end, each failure logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from shared.core.metrics import Metrics
from shared.infra.db import UNAVAILABLE_ERRORS
from shared.infra.redis import REDIS_ERRORS

logger = logging.getLogger(__name__)

# An outage is no bad item: it fails every item alike, so it ends the step (and is waited out by `every`).
OUTAGES = (*REDIS_ERRORS, *UNAVAILABLE_ERRORS)


class isolated:  # lower case: used as a statement, like contextlib.suppress
    """`with isolated(metrics, loop, event, **ids) as item:` runs one item of a pass (a batch, a job, a
    schedule) so that its failure is not the pass's.

    An outage (OUTAGES) propagates, as it would fail every item alike; any other error is logged in full
    with the item's ids, counted in `background_item_failures_total{loop}` and swallowed (`item.failed`).
    """

    def __init__(self, metrics: Metrics, loop: str, event: str, **ids: Any) -> None:
        self.metrics, self.loop, self.event, self.ids = metrics, loop, event, ids
        self.failed = False

    def __enter__(self) -> isolated:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if exc is None or isinstance(exc, OUTAGES) or not isinstance(exc, Exception):
            return False
        logger.error(self.event, extra=self.ids, exc_info=(kind, exc, tb))  # type: ignore[arg-type]
        self.metrics.background_item_failures.labels(self.loop).inc()
        self.failed = True
        return True


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
        except OUTAGES as exc:
            logger.warning(f"{name}.unavailable", extra={"reason": type(exc).__name__})
        except Exception:  # a background loop's boundary: log it in full and try again next tick
            logger.exception(f"{name}.failed")
        if await pause(interval_s, until):
            return
