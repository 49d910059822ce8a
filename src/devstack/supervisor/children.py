"""One supervised child of `conveyor run`: start it, know when it is ready, restart it with backoff, stop it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import subprocess
from collections.abc import Mapping
from typing import Any, BinaryIO, Final

from devstack.embedded.registry import ProcessRef, ServerUsers
from devstack.supervisor.options import ChildSpec, RestartPolicy
from shared.infra.parent import PARENT_PID_ENV

logger = logging.getLogger(__name__)

Process = asyncio.subprocess.Process

KILL_MARGIN_S: Final = 5.0  # on top of SHUTDOWN_GRACE_S, the time a child has to exit before SIGKILL
EXIT_CONFIG: Final = 2  # what the gateway and workers exit with when they refuse their configuration


class SupervisorError(Exception):
    """`conveyor run` gave up (after stopping everything it had started)."""


class ChildFailed(SupervisorError):
    """A child crash-loops, or cannot start as configured."""


def describe_exit(code: int) -> dict[str, Any]:
    """Log fields for an exit status: the code, and the signal's name when a signal ended the process."""
    fields: dict[str, Any] = {"exit_code": code}
    if code < 0:
        with contextlib.suppress(ValueError):
            fields["signal"] = signal.Signals(-code).name
    return fields


async def _within(proc: Process, timeout_s: float, until: asyncio.Event | None = None) -> bool:
    """Wait up to `timeout_s` (or until `until` is set) for `proc` to exit; True if it has."""
    waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(proc.wait())}
    if until is not None:
        waiters.add(asyncio.ensure_future(until.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    return proc.returncode is not None


class Child:
    """Keeps one ChildSpec running until `stop()`: an unexpected exit (crash, SIGKILL, OOM) is restarted
    after a backoff; too many exits in a short time, or a refused configuration, raise ChildFailed from the
    task `start()` returns.

    Each child reports readiness on an inherited pipe (`--ready-fd`): the gateway once it listens, a worker
    once it takes jobs (with its bound metrics port). Each incarnation counts as a user of the embedded
    servers (`users`) while it runs, so they outlive it even if this process is killed.
    """

    def __init__(
        self, spec: ChildSpec, env: Mapping[str, str], policy: RestartPolicy, *, users: ServerUsers | None = None
    ) -> None:
        self.spec = spec
        self.name = spec.name
        # The child sets its own parent-death signal (shared.infra.parent.follow_parent): no preexec_fn here.
        self.env = {**spec.env(env), PARENT_PID_ENV: str(os.getpid())}
        self.policy = policy
        self.users = users
        self.proc: Process | None = None
        self.metrics_port: int | None = None
        self.ready = asyncio.Event()
        self._ready_at: float | None = None
        self._stopping = asyncio.Event()
        self._grace_s = 0.0
        self._forced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._supervise(), name=f"child:{self.name}")
        return self._task

    async def stop(self, grace_s: float, forced: asyncio.Event) -> None:
        """SIGTERM the child and wait `grace_s` (+ a margin) for it; once `forced`, interrupt it, then SIGKILL."""
        self._grace_s, self._forced = grace_s, forced
        self._stopping.set()
        if self._task is not None:
            # Whatever ended the task (ChildFailed, an OSError from spawning: reported by whoever awaited it
            # first), stopping goes on; and the process, if one is left, must not outlive us.
            await asyncio.wait({self._task})
            if not self._task.cancelled():
                self._task.exception()
        if self.proc is not None and self.proc.returncode is None:
            await self._terminate(self.proc)

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        restarts = 0
        exits: collections.deque[float] = collections.deque()
        while not self._stopping.is_set():
            code, healthy_s = await self._run_once(restarts)
            if code is None:
                return  # stopped on request
            now = loop.time()
            if healthy_s is not None and healthy_s >= self.policy.healthy_after_s:
                restarts = 0
            exits.append(now)
            while now - exits[0] > self.policy.window_s:
                exits.popleft()
            if code == EXIT_CONFIG and healthy_s is None:
                raise ChildFailed(
                    f"{self.name} could not start with its configuration (exit code {code}; its error is above)"
                )
            if len(exits) >= self.policy.max_exits:
                raise ChildFailed(
                    f"{self.name} exited {len(exits)} times within {self.policy.window_s:g} s "
                    f"(last exit code {code}); not restarting it"
                )
            restarts += 1
            delay = self.policy.delay_s(restarts)
            logger.warning(
                "supervisor.child_restarted",
                extra={"child": self.name, **describe_exit(code), "attempt": restarts, "delay_s": delay},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _run_once(self, restarts: int) -> tuple[int | None, float | None]:
        """Run one incarnation: (exit code, seconds it was ready) or (None, None) when stopped on request."""
        proc, ready_pipe = await self._spawn(restarts)
        user: ProcessRef | None = None
        try:
            if self.users is not None:
                user = await self.users.add(proc.pid)
            return await self._watch(proc, ready_pipe)
        finally:
            if proc.returncode is None:
                await self._terminate(proc)  # cancelled, or an error above: never leave it running
            if self.users is not None and user is not None:
                await self.users.drop(user)

    async def _watch(self, proc: Process, ready_pipe: BinaryIO) -> tuple[int | None, float | None]:
        readiness = asyncio.create_task(self._await_ready(proc, ready_pipe))
        exited = asyncio.ensure_future(proc.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            readiness.cancel()
            await asyncio.gather(readiness, stopping, return_exceptions=True)
            ready_pipe.close()  # already closed unless the wait was cut short
        loop = asyncio.get_running_loop()
        healthy_s = loop.time() - self._ready_at if self._ready_at is not None else None
        self.ready.clear()
        self._ready_at = None
        if self._stopping.is_set():
            await self._terminate(proc)
            return None, None
        return await exited, healthy_s

    async def _spawn(self, restarts: int) -> tuple[Process, BinaryIO]:
        read_fd, write_fd = os.pipe()
        try:
            # Own session: a terminal's Ctrl-C (or a signal to our group) reaches only us; each child is
            # signalled once, by us, in order.
            self.proc = proc = await asyncio.create_subprocess_exec(
                *self.spec.argv(write_fd),
                env=self.env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=(write_fd,),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        logger.info("supervisor.child_started", extra={"child": self.name, "pid": proc.pid, "restarts": restarts})
        return proc, os.fdopen(read_fd, "rb", buffering=0)

    async def _await_ready(self, proc: Process, ready_pipe: BinaryIO) -> None:
        ready = await self._read_ready_line(ready_pipe)
        if ready and proc.returncode is None:
            self._ready_at = asyncio.get_running_loop().time()
            self.ready.set()
            port = {"metrics_port": self.metrics_port} if self.metrics_port is not None else {}
            logger.info("supervisor.child_ready", extra={"child": self.name, "pid": proc.pid, **port})

    async def _read_ready_line(self, pipe: BinaryIO) -> bool:
        """The child writes one JSON line once it is up (a worker: `{"metrics_port": N}`); EOF if it died first."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        try:
            line = await reader.readline()
        finally:
            transport.close()
        try:
            report = json.loads(line)
        except ValueError:
            return False
        port = report.get("metrics_port") if isinstance(report, dict) else None
        self.metrics_port = port if isinstance(port, int) else None
        return True

    async def _terminate(self, proc: Process) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        if await _within(proc, self._grace_s + KILL_MARGIN_S, until=self._forced):
            return
        if self._forced.is_set() and not self.spec.is_gateway:
            # A worker's second SIGTERM cancels its running jobs, which go back to the queue.
            logger.warning("supervisor.child_interrupted", extra={"child": self.name, "pid": proc.pid})
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            if await _within(proc, KILL_MARGIN_S):
                return
        logger.warning("supervisor.child_killed", extra={"child": self.name, "pid": proc.pid})
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # its session's group: anything it started goes too
        await proc.wait()
