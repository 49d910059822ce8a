"""The Conveyor stack under measurement, as subprocesses: the gateway (kept for the whole run) and the `default`
worker processes (started and stopped by each phase), with the environment they run in and their logs."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from harness import BenchError, Config
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from devstack.embedded.process import free_port
from shared.core.settings import GatewaySettings, WorkerSettings


def die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the bench itself dies (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    ready_fd: int | None = None  # the read end of its `--ready-fd` pipe: a line arrives once it takes jobs

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join("    " + line for line in text[-lines:])

    def ready(self) -> bool:
        """Whether it has reported readiness on its pipe (non-blocking)."""
        if self.ready_fd is None:
            return True
        try:
            line = os.read(self.ready_fd, 4096)
        except BlockingIOError:
            return False
        os.close(self.ready_fd)
        self.ready_fd = None
        if not line:
            self.check_alive()
            raise BenchError(f"{self.name} closed its ready pipe without a word:\n{self.tail()}")
        return True

    def stop(self, timeout: float = 15.0) -> None:
        if self.ready_fd is not None:
            os.close(self.ready_fd)
            self.ready_fd = None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def setting_names() -> set[str]:
    """Every environment variable Conveyor's gateway and worker settings read."""
    names: set[str] = set()
    for top in (GatewaySettings, WorkerSettings):
        for section in top.model_fields.values():
            model = section.annotation
            if isinstance(model, type) and issubclass(model, BaseSettings):
                aliases = (f.validation_alias for f in model.model_fields.values())
                names |= {str(a.choices[0]) for a in aliases if isinstance(a, AliasChoices)}
    return names


@dataclass
class Stack:
    """The gateway (kept for the whole run) and the `default` workers running now (a phase starts and stops them)."""

    cfg: Config
    logdir: Path
    api_port: int = field(default_factory=free_port)
    gateway: Process | None = None
    workers: list[Process] = field(default_factory=list)
    started: int = 0  # worker processes started so far

    def overrides(self) -> dict[str, str]:
        c = self.cfg
        return {
            "REDIS_CACHE_URL": c.cache_url, "REDIS_JOBS_URL": c.jobs_url, "DATABASE_URL": c.database_url,
            "JWT_SECRET": c.jwt_secret, "API_HOST": "127.0.0.1", "API_PORT": str(self.api_port),
            "WORKER_METRICS_HOST": "127.0.0.1", "WORKER_METRICS_PORT": "0",
            "LOG_LEVEL": "WARNING", "LOG_FORMAT": "console", "SHUTDOWN_GRACE_S": "5",
            "RATE_LIMIT_PER_MINUTE": "1000000000",  # the bench is one caller sending thousands of jobs a second
            "MAX_QUEUED_PER_OWNER": "100000000",  # and keeps backlogs far larger than one tenant's cap
            "ENVIRONMENT": "development",  # on loopback, with system.echo, as `make run`
        }  # fmt: skip

    def inherited(self) -> list[str]:
        """Conveyor settings taken from the caller's environment (e.g. WORKER_MAX_JOBS to try a tuning)."""
        return sorted(n for n in setting_names() - set(self.overrides()) if n in os.environ)

    def spawn(self, name: str, module: str, *args: str, ready_pipe: bool = False) -> Process:
        log = self.logdir / f"{name}.log"
        read_end, write_end = os.pipe() if ready_pipe else (None, None)
        extra = ["--ready-fd", str(write_end)] if write_end is not None else []
        try:
            with log.open("ab") as out:
                popen = subprocess.Popen(
                    [sys.executable, "-m", module, *args, *extra],
                    env={**os.environ, **self.overrides()},
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    pass_fds=() if write_end is None else (write_end,),
                    preexec_fn=die_with_parent,  # the bench is single-threaded
                )
        finally:
            if write_end is not None:
                os.close(write_end)
        if read_end is not None:
            os.set_blocking(read_end, False)
        return Process(name, popen, log, read_end)

    def start_gateway(self) -> Process:
        self.gateway = self.spawn("gateway", "gateway")
        return self.gateway

    def start_workers(self, count: int = 1) -> list[Process]:
        """`count` more `default` worker processes, named (and logging to) worker-1, worker-2, … in the order the
        run starts them, so a line in the log summary says which phase's worker wrote it."""
        for _ in range(count):
            self.started += 1
            name = f"worker-{self.started}"
            self.workers.append(self.spawn(name, "workers", "default", "--name", name, ready_pipe=True))
        return list(self.workers)

    async def workers_ready(self, within: float = 60.0) -> None:
        """Until every running worker has said it takes jobs; BenchError when one exits or it takes too long."""
        deadline = time.monotonic() + within
        waiting = list(self.workers)
        while waiting:
            waiting = [p for p in waiting if not p.ready()]
            for process in waiting:
                process.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{waiting[0].name} was not ready within {within:g} s:\n{waiting[0].tail()}")
            await asyncio.sleep(0.02)

    def stop_workers(self) -> None:
        """SIGTERM every running worker at once, then wait for each (their grace periods overlap)."""
        for process in self.workers:
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        for process in self.workers:
            process.stop()
        self.workers = []

    def processes(self) -> list[Process]:
        return [p for p in (self.gateway, *self.workers) if p is not None]

    def log_summary(self) -> list[str]:
        """What the gateway and every worker logged (LOG_LEVEL=WARNING: warnings and errors only)."""
        lines: list[str] = []
        for log in sorted(self.logdir.glob("*.log")):
            if count := len(text := log.read_text(errors="replace").splitlines()):
                lines.append(f"{log.stem} logged {count} line(s) at WARNING or above; the last ones:")
                lines.append("\n".join("    " + line for line in text[-5:]))
        return lines

    def close(self) -> None:
        self.stop_workers()
        if self.gateway is not None:
            self.gateway.stop()


@contextlib.contextmanager
def conveyor_stack(cfg: Config) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as logdir:
        stack = Stack(cfg, Path(logdir))
        try:
            yield stack
        finally:
            stack.close()


async def wait_ready(url: str, process: Process, within: float = 30.0) -> None:
    """Poll `url` until it answers 200; BenchError with the process's log when it exits or times out."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            process.check_alive()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise BenchError(f"{process.name} was not ready at {url} within {within:g} s:\n{process.tail()}")
