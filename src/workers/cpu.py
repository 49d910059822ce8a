"""A process pool for CPU-heavy work, so a worker's event loop (heartbeats, other jobs) never blocks."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from prometheus_client import Gauge

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _init_child(threads: int) -> None:
    """Runs in each child before any task: cap the engines' thread pools, so N children on N cores do
    not each start N threads (read when polars is first imported, which happens after this)."""
    os.environ["POLARS_MAX_THREADS"] = str(threads)


def child_threads(processes: int) -> int:
    return max(1, (os.cpu_count() or 1) // processes)


class CpuPool(Executor):
    """A spawn ProcessPoolExecutor that replaces itself when a child dies.

    A child killed mid-task (out of memory, a crash in native code) breaks the whole pool: every task in
    it fails with BrokenProcessPool. That task's job retries; the next submit gets a fresh pool, so one
    bad file never takes the worker's CPU work down for good.
    """

    def __init__(self, processes: int, *, in_flight: Gauge | None = None) -> None:
        self.processes = processes
        self._in_flight = in_flight
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        self._closed = False

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_child,
            initargs=(child_threads(self.processes),),
        )

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken and not self._closed:
                logger.warning("cpu_pool.replaced", extra={"processes": self.processes})
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        pool = self._pool
        try:
            future = pool.submit(fn, *args, **kwargs)
        except BrokenProcessPool:
            self._replace(pool)
            pool = self._pool
            future = pool.submit(fn, *args, **kwargs)

        if self._in_flight is not None:
            self._in_flight.inc()

        def finished(done: Future[T]) -> None:
            if self._in_flight is not None:
                self._in_flight.dec()
            if not done.cancelled() and isinstance(done.exception(), BrokenProcessPool):
                self._replace(pool)

        future.add_done_callback(finished)
        return future

    def _children(self) -> list[multiprocessing.process.BaseProcess]:
        return list((getattr(self._pool, "_processes", None) or {}).values())  # CPython's executor, 3.11

    def child_pids(self) -> list[int]:
        """Process ids of the live children (for benchmarks)."""
        return [p.pid for p in self._children() if p.pid is not None]

    def terminate(self) -> None:
        """Stop now: children still working are killed (their jobs were re-queued by the runtime), so
        the interpreter's exit does not wait for a long task nobody will read."""
        children = self._children()
        self.shutdown(wait=False, cancel_futures=True)
        for child in children:
            child.terminate()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


@contextlib.contextmanager
def open_cpu_pool(processes: int, *, in_flight: Gauge | None = None) -> Iterator[CpuPool]:
    """Processes start on first use; `spawn` so no child inherits the parent's event loop or sockets.
    `in_flight` counts the tasks handed to the pool and not yet finished."""
    pool = CpuPool(processes, in_flight=in_flight)
    try:
        yield pool
    finally:
        pool.terminate()
