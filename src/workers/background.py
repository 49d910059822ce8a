"""Periodic background work of a worker process: a loop no error can end, each failure logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from shared.db import UNAVAILABLE_ERRORS
from shared.queue import REDIS_ERRORS

logger = logging.getLogger(__name__)


async def every(interval_s: float, step: Callable[[], Awaitable[object]], *, name: str) -> None:
    """Run `step` now and then every `interval_s` until cancelled; outages are logged and waited out."""
    while True:
        try:
            await step()
        except (*REDIS_ERRORS, *UNAVAILABLE_ERRORS) as exc:
            logger.warning(f"{name}.unavailable", extra={"reason": type(exc).__name__})
        except Exception:  # a background loop's boundary: log it in full and try again next tick
            logger.exception(f"{name}.failed")
        await asyncio.sleep(interval_s)
