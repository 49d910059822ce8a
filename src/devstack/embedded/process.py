"""One embedded server child process: started with its output in a log file, probed until ready, stopped by a signal."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import pwd
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from shared.infra.parent import die_with_parent

logger = logging.getLogger(__name__)

HOST: Final = "127.0.0.1"
# The machine's own servers usually sit on these; an embedded server must never take them.
RESERVED_PORTS: Final = frozenset({6379, 5432})
_LOG_TAIL_LINES: Final = 25
PROBE_INTERVAL_S: Final = 0.1


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be found, started or reached."""


def free_port(host: str = HOST) -> int:
    """A port the OS reports free right now (ephemeral range, so never 6379/5432)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port
    raise EmbeddedServerError(f"could not find a free port on {host}")


@dataclass(frozen=True, slots=True)
class Account:
    """The unprivileged user a server runs as when we are root (PostgreSQL refuses root)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def lookup(cls, name: str) -> Account:
        try:
            entry = pwd.getpwnam(name)
        except KeyError as exc:
            raise EmbeddedServerError(f"running as root needs the system user {name!r} to run PostgreSQL") from exc
        return cls(name, entry.pw_uid, entry.pw_gid, tuple(os.getgrouplist(name, entry.pw_gid)))


async def wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Poll (never block the loop) until the process exits; False on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while proc.poll() is None:
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def popen(
    argv: Sequence[str | Path],
    *,
    account: Account | None,
    cwd: Path,
    env: dict[str, str] | None,
    output: int | None,
    parent_death: signal.Signals,
    stdin: int = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    # Own session: a Ctrl-C in the terminal reaches only the supervisor, which stops servers last. The
    # parent-death signal needs prctl in the child, which only preexec_fn can do for a binary we do not own.
    return subprocess.Popen(  # noqa: S603 - argv is built here from resolved binary paths, no shell
        [str(a) for a in argv],
        stdin=stdin,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        cwd=cwd,
        env=env,
        start_new_session=True,
        umask=0o077,  # its data, logs and sockets are for its owner only (this machine has other accounts)
        preexec_fn=die_with_parent(parent_death),
        user=account.uid if account else None,
        group=account.gid if account else None,
        extra_groups=list(account.groups) if account else None,
    )


async def run_quiet(argv: Sequence[str | Path], *, account: Account | None, cwd: Path, timeout_s: float) -> int:
    """Run a short command to completion with its output discarded; its exit code (-9 when it had to be killed)."""
    proc = popen(argv, account=account, cwd=cwd, env=None, output=subprocess.DEVNULL, parent_death=signal.SIGKILL)
    if not await wait_exit(proc, timeout_s):
        proc.kill()
        await wait_exit(proc, 5)
    return proc.returncode if proc.returncode is not None else -9


class ServerProcess(abc.ABC):
    """One long-running server child: started with its output in a log file, stopped by a signal, then SIGKILL."""

    kind: str = "server"
    stop_signal: signal.Signals = signal.SIGTERM

    def __init__(self, *, start_timeout_s: float, stop_timeout_s: float) -> None:
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.port: int | None = None
        self.log_path: Path | None = None
        self._log_offset = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    @abc.abstractmethod
    def url(self) -> str: ...

    @property
    @abc.abstractmethod
    def detail(self) -> str:
        """Where the server keeps its data, for a banner."""

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    async def exited(self) -> int:
        """Wait until the server process ends on its own; its exit code."""
        while True:
            proc = self._proc
            if proc is None:
                return 0
            if proc.poll() is not None:
                return proc.returncode
            await asyncio.sleep(PROBE_INTERVAL_S * 5)

    @abc.abstractmethod
    async def start(self) -> None: ...

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()  # a half-started server (or a cancelled start) must not outlive us
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _open_child(
        self,
        argv: Sequence[str | Path],
        *,
        log_path: Path,
        cwd: Path,
        account: Account | None,
        env: dict[str, str] | None,
        parent_death: signal.Signals,
        stdin: int = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        """Start a child whose output is appended to `log_path` (0600: a server's log may quote its data);
        `log_tail()` then shows only this run's lines."""
        self.log_path = log_path
        self._log_offset = log_path.stat().st_size if log_path.exists() else 0
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            return popen(argv, account=account, cwd=cwd, env=env, output=fd, parent_death=parent_death, stdin=stdin)
        finally:
            os.close(fd)

    def _spawn(
        self,
        argv: Sequence[str | Path],
        *,
        log_path: Path,
        cwd: Path,
        account: Account | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self._proc = self._open_child(
            argv, log_path=log_path, cwd=cwd, account=account, env=env, parent_death=self.stop_signal
        )
        logger.info("embedded.started", extra={"server": self.kind, "pid": self._proc.pid, "port": self.port})

    async def _await_ready(self, probe: Callable[[], Awaitable[bool]]) -> None:
        """Poll `probe` until it answers True; fail fast if the process exits."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout_s
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc else None
                raise self.failure(f"the embedded {self.kind} exited during start-up (exit code {code})")
            if await probe():
                return
            if loop.time() >= deadline:
                raise self.failure(f"the embedded {self.kind} did not answer within {self.start_timeout_s:g} s")
            await asyncio.sleep(PROBE_INTERVAL_S)

    def log_tail(self) -> str:
        """The last lines this run wrote to the server's log."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            lines = log.read().decode("utf-8", errors="replace").splitlines()
        return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(empty log)"

    def failure(self, message: str) -> EmbeddedServerError:
        return EmbeddedServerError(f"{message}\n--- last lines of {self.log_path} ---\n{self.log_tail()}")

    async def stop(self) -> None:
        """Ask the server to stop, wait `stop_timeout_s`, then SIGKILL its whole process group."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(self.stop_signal)
        if not await wait_exit(proc, self.stop_timeout_s):
            logger.warning("embedded.killed", extra={"server": self.kind, "pid": proc.pid})
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group: PostgreSQL's backends too
            await wait_exit(proc, 5)
        logger.info("embedded.stopped", extra={"server": self.kind, "exit_code": proc.returncode})
