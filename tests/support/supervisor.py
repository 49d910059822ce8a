"""A real `conveyor run` as a subprocess for the supervisor tests: its output, events, banner and child pids."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from shared.core import json
from support.helpers import TEST_JWT_SECRET, eventually
from support.stack import Services

CONVEYOR = Path(sys.executable).with_name("conveyor")
BANNER_END = "Press Ctrl-C to stop."
# Settings a developer's shell may hold that would point the run somewhere else.
_SCRUBBED = ("REDIS_", "DATABASE_URL", "SMTP_", "LOG_FORMAT", "WORKER_METRICS_PORT", "API_PORT", "WORKER_PROCESSES")


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not any(k.upper().startswith(p) for p in _SCRUBBED)}
    return {**env, "JWT_SECRET": TEST_JWT_SECRET, "LOG_LEVEL": "INFO", **settings}


def services_env(services: Services, smtp_port: int, api_port: int, **settings: str) -> dict[str, str]:
    """The test session's Redis pair, database and SMTP sink, as `conveyor run` reads them."""
    return clean_env(
        REDIS_CACHE_URL=services.cache_url, REDIS_JOBS_URL=services.jobs_url, DATABASE_URL=services.database_url,
        SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp_port), API_PORT=str(api_port), STORAGE_DIR=services.storage_dir,
        **settings,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class WorkerLine:
    """One worker child as the banner shows it."""

    name: str
    pid: int
    metrics_port: int


def embedded_url(banner: str, label: str) -> str:
    """The URL of the embedded `label` server (`redis`, `postgres`) as the children get it: the banner shows it
    without its password, and says in which file under var/ the password is kept."""
    match = re.search(rf"^\s+{label}\s+(\w+)://(\S+) \(embedded.*; password in (\S+)\)$", banner, re.MULTILINE)
    assert match, banner
    scheme, address, password_file = match.groups()
    user, at, host = address.rpartition("@")
    password = Path(password_file).read_text().strip()
    return f"{scheme}://{user}:{password}@{host}" if at else f"{scheme}://:{password}@{host}"


_WORKER_LINE = re.compile(r"^\s+(\S+)\s+pid (\d+), metrics http://[^\s/]+:(\d+)/metrics\s*$")


@dataclass
class Run:
    """One `conveyor run` subprocess writing its stdout and stderr (and its children's) to `out`."""

    proc: asyncio.subprocess.Process
    out: Path
    _offset: int = 0
    _text: list[str] = field(default_factory=list)
    _events: list[dict[str, Any]] = field(default_factory=list)

    def _refresh(self) -> None:
        with self.out.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next read
        self._offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            self._text.append(line)
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    self._events.append(json.loads(line))

    def text(self) -> str:
        self._refresh()
        return "\n".join(self._text)

    def events(self, name: str) -> list[dict[str, Any]]:
        self._refresh()
        return [e for e in self._events if e.get("event") == name]

    def pid(self, child: str) -> int | None:
        """The pid of `child`'s latest incarnation, once it has reported ready."""
        ready = [e["pid"] for e in self.events("supervisor.child_ready") if e["child"] == child]
        return ready[-1] if ready else None

    def metrics_port(self, child: str) -> int | None:
        """The metrics port of `child`'s latest incarnation, once it has reported ready."""
        ready = [e.get("metrics_port") for e in self.events("supervisor.child_ready") if e["child"] == child]
        return ready[-1] if ready else None

    async def banner(self, within: float = 90) -> str:
        """The banner, once printed; fails at once if `conveyor run` exits first."""

        async def printed() -> str | None:
            if self.proc.returncode is not None:
                raise AssertionError(f"conveyor run exited ({self.proc.returncode}):\n{self.text()[-3000:]}")
            text = self.text()
            start = text.rfind("Conveyor is running")
            return text[start:] if start >= 0 and BANNER_END in text[start:] else None

        text = await eventually(printed, within=within, interval=0.1)
        return text[: text.index(BANNER_END)]

    def workers(self, banner: str) -> list[WorkerLine]:
        return [
            WorkerLine(m[1], int(m[2]), int(m[3])) for line in banner.splitlines() if (m := _WORKER_LINE.match(line))
        ]

    async def stop(self, timeout_s: float = 60) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout=timeout_s)


@contextlib.asynccontextmanager
async def conveyor_run(
    *args: str, env: Mapping[str, str], cwd: Path, out: Path | None = None, new_session: bool = False
) -> AsyncIterator[Run]:
    """Start `conveyor run ARGS`; at the end it is stopped (SIGTERM, then SIGKILL) and its output tail shown."""
    out = out or cwd / "conveyor.log"
    with out.open("ab") as log:  # append: every process writes whole lines at the end
        proc = await asyncio.create_subprocess_exec(
            CONVEYOR, "run", *args, env=dict(env), cwd=cwd, stdout=log, stderr=log, start_new_session=new_session
        )
    run = Run(proc, out)
    try:
        yield run
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        print(run.text()[-4000:])  # noqa: T201 - shown only when the test fails


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.json(content_type=None)
