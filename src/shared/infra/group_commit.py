"""Group commit: the writes of many concurrent callers go out as one statement, each caller still waiting for its own.

A caller hands its item to `submit` and waits. While fewer than `max_in_flight` groups are being written, a
waiting group is written at once (after `linger_s`, if set), so a lone caller pays one statement, as without
grouping; while the writes are busy, the items arriving meanwhile gather into the next group, up to `max_items`.
Under load the groups grow by themselves and the cost per item falls; nobody waits for a timer that need not run.

Each caller's `submit` returns only once the statement that carried its item has returned (for PostgreSQL,
committed): what it acknowledges afterwards is durable. A failed statement fails every item of its group with
that error; a flush may also fail single items by returning an exception in their place.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]]


class GroupCommit(Generic[T, R]):
    """Writes items in groups through `flush`, which gets a group and returns one result per item, in order
    (an exception in an item's place fails that item only)."""

    def __init__(
        self, flush: Flush[T, R], *, max_items: int = 500, max_in_flight: int = 2, linger_s: float = 0.0
    ) -> None:
        if max_items < 1 or max_in_flight < 1 or linger_s < 0:
            raise ValueError("max_items and max_in_flight must be at least 1, linger_s at least 0")
        self._flush = flush
        self.max_items = max_items
        self.max_in_flight = max_in_flight
        self.linger_s = linger_s
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._lingering = False
        self.groups = 0  # groups written so far: what a test or a metric reads
        self.items = 0

    @property
    def waiting(self) -> int:
        """Items handed in and not yet in a group being written."""
        return len(self._waiting)

    async def submit(self, item: T) -> R:
        """Write `item` with the next group; returns its result once that group's statement has returned.

        A caller cancelled while waiting does not take its item back: the group it is in is written anyway.
        """
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._start()
        return await asyncio.shield(future)

    def _start(self) -> None:
        while self._waiting and len(self._in_flight) < self.max_in_flight:
            if self.linger_s and len(self._waiting) < self.max_items:
                if not self._lingering:
                    self._lingering = True
                    asyncio.get_running_loop().call_later(self.linger_s, self._lingered)
                return
            group, self._waiting = self._waiting[: self.max_items], self._waiting[self.max_items :]
            task = asyncio.get_running_loop().create_task(self._write(group))
            self._in_flight.add(task)
            task.add_done_callback(self._done)

    def _lingered(self) -> None:
        self._lingering = False
        linger, self.linger_s = self.linger_s, 0.0
        try:
            self._start()
        finally:
            self.linger_s = linger

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._start()

    async def _write(self, group: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.groups += 1
        self.items += len(group)
        try:
            results = await self._flush([item for item, _ in group])
            if len(results) != len(group):
                raise RuntimeError(f"a group of {len(group)} items came back with {len(results)} results")
        except asyncio.CancelledError:
            for _, future in group:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - every waiter of the group gets the statement's own error
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(group, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        """Wait for every group being written, and write what is still waiting."""
        while self._waiting or self._in_flight:
            if self._waiting and not self._in_flight:
                linger, self.linger_s = self.linger_s, 0.0
                self._start()
                self.linger_s = linger
            if self._in_flight:
                with contextlib.suppress(Exception):
                    await asyncio.gather(*self._in_flight, return_exceptions=True)
