"""Stop requests from signals: one graceful stop however many copies arrive; a deliberate second Ctrl-C forces."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import Final

logger = logging.getLogger(__name__)

STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# A signal sent to a process group reaches `make` and us; make may pass it on: copies arrive together.
# Only a Ctrl-C this long after the first stop request is a person asking to skip the grace period.
FORCE_AFTER_S: Final = 1.0


class StopRequest:
    """Signal handler state: the first signal asks for a graceful stop; SIGINT at least FORCE_AFTER_S later
    sets `forced` (skip the grace period). SIGTERM and SIGHUP never force: process managers that want a hard
    stop send SIGKILL."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()
        self._clock = clock
        self._first_at: float | None = None

    def __call__(self, sig: signal.Signals) -> None:
        now = self._clock()
        if self._first_at is None:
            self._first_at = now
            logger.info("supervisor.stop_requested", extra={"signal": sig.name})
            self.requested.set()
        elif sig is signal.SIGINT and now - self._first_at >= FORCE_AFTER_S and not self.forced.is_set():
            logger.warning("supervisor.forcing_stop", extra={"signal": sig.name})
            self.forced.set()
        elif not self.forced.is_set():
            logger.info(
                "supervisor.already_stopping",
                extra={"signal": sig.name, "hint": "press Ctrl-C again to stop without waiting for running jobs"},
            )
