"""A process pool for CPU-heavy work, so a worker's event loop (heartbeats, other jobs) never blocks.

Each of the pool's processes runs one task at a time and belongs to one thread of this process, which
hands it tasks over a pipe. That is what lets a task be stopped: cancelling the future of a task that is
running kills the process running it (a timed-out or cancelled analysis must not scan on while other
jobs wait for the pool), and a fresh process takes its place. concurrent.futures' ProcessPoolExecutor
cannot do this: it does not say which process runs which task, and never cancels a running one.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, InvalidStateError
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Final, TypeVar

from prometheus_client import Gauge

logger = logging.getLogger(__name__)
T = TypeVar("T")

_SPAWN: Final = multiprocessing.get_context("spawn")  # no child inherits the parent's event loop or sockets
# How long a process asked to stop (shutdown) may take before it is killed.
STOP_GRACE_S: Final = 5.0


def child_threads(processes: int) -> int:
    return max(1, (os.cpu_count() or 1) // processes)


def _child_main(conn: Connection, threads: int) -> None:
    """A pool process: run the tasks sent on `conn` one by one, answering (ok, value or exception).

    The engines' thread pools are capped before any task (POLARS_MAX_THREADS is read when polars is first
    imported, which happens after this), so N processes on N cores do not each start N threads. Ctrl-C in
    a terminal reaches the whole process group: the parent decides when its pool stops, so it is ignored.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["POLARS_MAX_THREADS"] = str(threads)
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent is gone
            return
        except Exception as exc:  # noqa: BLE001 - the task does not unpickle here: its caller hears why
            conn.send((False, exc))
            continue
        if message is None:
            return
        fn, args, kwargs = message
        try:
            outcome: tuple[bool, Any] = (True, fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - the task's own failure, raised again by its future
            outcome = (False, exc)
        try:
            conn.send(outcome)
        except Exception as exc:  # noqa: BLE001 - a result or an exception that does not pickle
            conn.send((False, RuntimeError(f"the task's outcome could not be sent back: {exc!r}")))


class _Task:
    """One submitted call and its future."""

    __slots__ = ("args", "fn", "future", "kwargs")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], future: Future[Any]):
        self.fn, self.args, self.kwargs, self.future = fn, args, kwargs, future


class _TaskFuture(Future[T]):
    """A future whose `cancel()` also stops a running task (by killing its process).

    The pool never marks its futures running, so cancelling one always succeeds until it is done.
    """

    def __init__(self, on_cancel: Callable[[Future[Any]], None]) -> None:
        super().__init__()
        self._on_cancel = on_cancel

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        self._on_cancel(self)
        return True


class _Slot:
    """One pool process and the thread that feeds it; the process is started on the slot's first task
    and replaced whenever it dies or is killed."""

    def __init__(self, pool: CpuPool, index: int) -> None:
        self.pool = pool
        self.lock = threading.Lock()
        self.process: BaseProcess | None = None
        self.conn: Connection | None = None
        self.current: Future[Any] | None = None
        self.killed = False
        self.thread = threading.Thread(target=self._serve, name=f"cpu-pool-{index}", daemon=True)
        self.thread.start()

    def pid(self) -> int | None:
        """The process's id until it is reaped (only the slot's thread waits for it)."""
        process = self.process
        return process.pid if process is not None else None

    def kill_if_running(self, future: Future[Any]) -> None:
        """Called by a cancelled future: if this slot's process runs it, kill the process."""
        with self.lock:
            if self.current is future:
                self._kill()

    def kill(self) -> None:
        with self.lock:
            self._kill()

    def _kill(self) -> None:
        if self.process is not None and not self.killed:
            self.killed = True
            with contextlib.suppress(OSError):  # already gone
                self.process.kill()

    def _start(self) -> None:
        parent, child = _SPAWN.Pipe(duplex=True)
        process = _SPAWN.Process(
            target=_child_main, args=(child, child_threads(self.pool.processes)), name="conveyor-cpu", daemon=True
        )
        process.start()
        child.close()  # only the child holds its end now: its death reads as EOF here
        with self.lock:
            self.process, self.conn, self.killed = process, parent, False

    def _reap(self) -> int | None:
        """The process died or was killed: wait for it (so its id is free) and forget it."""
        with self.lock:
            process, conn = self.process, self.conn
            self.process = self.conn = None
            self.killed = False
        if conn is not None:
            conn.close()
        if process is None:
            return None
        process.join()
        return process.exitcode

    def _serve(self) -> None:
        while True:
            task = self.pool._tasks.get()
            if task is None:
                self._stop()
                return
            if task.future.cancelled():
                continue
            if self.process is not None and not self.process.is_alive():  # died idle (the OOM killer)
                self._reap()
            if self.process is None:
                self._start()
            self._run(task)
            if self.killed:  # killed while its task ended: replace it before the next one
                self._reap()

    def _run(self, task: _Task) -> None:
        future = task.future
        with self.lock:
            if future.cancelled():
                return
            self.current = future
        conn = self.conn
        try:
            outcome = None if conn is None else _call(conn, task)
        except (OSError, EOFError):  # the process died, or was killed by a cancel
            outcome = None
        with self.lock:  # before any replacement starts: a late cancel must not kill that one
            self.current = None
        if outcome is None:
            self._died(future)
        else:
            _settle(future, *outcome)

    def _died(self, future: Future[Any]) -> None:
        pid = self.process.pid if self.process is not None else None
        killed = self.killed
        code = self._reap()
        if future.cancelled() and killed:
            logger.info("cpu_pool.task_stopped", extra={"pid": pid})
        else:
            logger.warning("cpu_pool.process_died", extra={"pid": pid, "exit_code": code})
            _settle(future, False, BrokenProcessPool(f"the CPU pool process died (exit code {code}) during the task"))
        if not self.pool._closed:
            self._start()  # the replacement is ready before the next task

    def _stop(self) -> None:
        """Shutdown: the process ends after its last task (or is killed if it does not within STOP_GRACE_S)."""
        process, conn = self.process, self.conn
        if process is None or conn is None:
            return
        with contextlib.suppress(OSError):
            conn.send(None)
        process.join(STOP_GRACE_S)
        if process.is_alive():
            self.kill()
        self._reap()


def _call(conn: Connection, task: _Task) -> tuple[bool, Any]:
    """Send `task` to the process on `conn` and read its outcome; OSError or EOFError if the process is gone."""
    try:
        conn.send((task.fn, task.args, task.kwargs))
    except (OSError, EOFError):
        raise
    except Exception as exc:  # noqa: BLE001 - the call does not pickle (the process never saw it): its caller hears why
        return False, exc
    try:
        outcome: tuple[bool, Any] = conn.recv()
    except (OSError, EOFError):
        raise
    except Exception as exc:  # noqa: BLE001 - the outcome does not unpickle here (the process is fine): likewise
        return False, exc
    return outcome


def _settle(future: Future[Any], ok: bool, value: Any) -> None:
    with contextlib.suppress(InvalidStateError):  # cancelled meanwhile: nobody reads it
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class CpuPool(Executor):
    """`processes` spawn processes, each running one task at a time; a task whose future is cancelled while
    it runs is stopped by killing its process, and a process that dies (out of memory, a crash in native
    code) fails only its own task, with BrokenProcessPool. Either way a fresh process takes its place."""

    def __init__(self, processes: int, *, in_flight: Gauge | None = None) -> None:
        self.processes = processes
        self._in_flight = in_flight
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._slots: list[_Slot] = []
        self._closed = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: _TaskFuture[T] = _TaskFuture(self._cancelled)
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to a CPU pool that was shut down")
            if not self._slots:  # threads now, processes on their first task
                self._slots = [_Slot(self, i) for i in range(self.processes)]
            if (gauge := self._in_flight) is not None:
                gauge.inc()
                future.add_done_callback(lambda _: gauge.dec())
            self._tasks.put(_Task(fn, args, kwargs, future))
        return future

    def _cancelled(self, future: Future[Any]) -> None:
        for slot in self._slots:
            slot.kill_if_running(future)

    def child_pids(self) -> list[int]:
        """Process ids of the live pool processes."""
        return [pid for slot in self._slots if (pid := slot.pid()) is not None]

    def terminate(self) -> None:
        """Stop now: tasks still running are killed (their jobs were re-queued by the runtime), so the
        interpreter's exit does not wait for a long task nobody will read."""
        self.shutdown(wait=False, cancel_futures=True)
        for slot in self._slots:
            slot.kill()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if cancel_futures:
                self._cancel_queued()
            for _ in self._slots:
                self._tasks.put(None)
        if wait:
            for slot in self._slots:
                slot.thread.join()

    def _cancel_queued(self) -> None:
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                return
            if task is not None:
                task.future.cancel()


@contextlib.contextmanager
def open_cpu_pool(processes: int, *, in_flight: Gauge | None = None) -> Iterator[CpuPool]:
    """Processes start on first use. `in_flight` counts the tasks handed to the pool and not yet finished."""
    pool = CpuPool(processes, in_flight=in_flight)
    try:
        yield pool
    finally:
        pool.terminate()
