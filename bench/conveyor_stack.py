"""The Conveyor stack under measurement, as subprocesses: the gateway (kept for the whole run) and one
`default` worker (started and stopped every round), with the environment they run in and their logs."""

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


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the bench itself dies (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join("    " + line for line in text[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
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
    """The gateway (kept for the whole run) and one `default` worker (started and stopped every round)."""

    cfg: Config
    logdir: Path
    api_port: int = field(default_factory=free_port)
    gateway: Process | None = None
    worker: Process | None = None

    def overrides(self) -> dict[str, str]:
        c = self.cfg
        return {
            "REDIS_CACHE_URL": c.cache_url, "REDIS_JOBS_URL": c.jobs_url, "DATABASE_URL": c.database_url,
            "JWT_SECRET": c.jwt_secret, "API_HOST": "127.0.0.1", "API_PORT": str(self.api_port),
            "WORKER_METRICS_HOST": "127.0.0.1", "WORKER_METRICS_PORT": "0",
            "LOG_LEVEL": "WARNING", "LOG_FORMAT": "console", "SHUTDOWN_GRACE_S": "5",
            "RATE_LIMIT_PER_MINUTE": "1000000000",  # the bench is one caller sending thousands of jobs a second
            "ENVIRONMENT": "development",  # on loopback, with system.echo, as `make run`
        }  # fmt: skip

    def inherited(self) -> list[str]:
        """Conveyor settings taken from the caller's environment (e.g. WORKER_MAX_JOBS to try a tuning)."""
        return sorted(n for n in setting_names() - set(self.overrides()) if n in os.environ)

    def spawn(self, name: str, module: str, *args: str) -> Process:
        log = self.logdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                env={**os.environ, **self.overrides()},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # the bench is single-threaded
            )
        return Process(name, popen, log)

    def start_gateway(self) -> Process:
        self.gateway = self.spawn("gateway", "gateway")
        return self.gateway

    def start_worker(self) -> Process:
        self.worker = self.spawn("worker", "workers", "default")
        return self.worker

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def log_summary(self) -> list[str]:
        """What the gateway and the last worker logged (LOG_LEVEL=WARNING: warnings and errors only)."""
        lines: list[str] = []
        for process in (self.gateway, self.worker):
            if process is not None and (count := len(process.log.read_text(errors="replace").splitlines())):
                lines.append(f"{process.name} logged {count} line(s) at WARNING or above; the last ones:")
                lines.append(process.tail(5))
        return lines

    def close(self) -> None:
        for process in (self.worker, self.gateway):
            if process is not None:
                process.stop()


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
