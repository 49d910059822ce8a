"""Embedded servers shared by every `conveyor run` of one directory: a registry file under a file lock.

`var/embedded.json` (0600: the URLs carry the servers' passwords) holds, per server kind, the keeper
process that owns the server (see `devstack.embedded.keeper`), its URL and its users (the processes of
`conveyor run` that use it, each as a pid and its start time, so a reused pid never counts), and the
processes each of them started, so a server outlives every process that uses it. Every change happens
under `flock` on `var/embedded.lock`. The first user starts a keeper; the keeper stops the server once no
user is alive, so a user killed with SIGKILL does not keep the server running once its children are gone too.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Literal, TypeVar

from devstack.embedded.private import FILE_MODE, private_dir, tighten, write_private
from devstack.embedded.process import EmbeddedServerError

Kind = Literal["redis", "postgres"]
REGISTRY_FILE: Final = "embedded.json"
LOCK_FILE: Final = "embedded.lock"
KEEPER_LOG: Final = "embedded.log"
# PostgreSQL may first have to create its cluster (initdb), which is slow on a busy machine.
START_TIMEOUT_S: Final = 180.0
STOP_TIMEOUT_S: Final = 40.0
POLL_S: Final = 0.1
LOCK_POLL_S: Final = 0.01
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ProcessRef:
    """A process, told apart from a later one that reuses its pid by its start time (Linux /proc)."""

    pid: int
    start: str

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        return cls(pid, _start_time(pid) or "")

    @classmethod
    def load(cls, raw: Any) -> ProcessRef | None:
        if isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], int) and isinstance(raw[1], str):
            return cls(raw[0], raw[1])
        return None

    def dump(self) -> list[int | str]:
        return [self.pid, self.start]

    def alive(self) -> bool:
        if not Path("/proc/self/stat").exists():  # not Linux: the pid alone
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return _start_time(self.pid) == self.start


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks); None once the process is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces and parentheses
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


@dataclass(frozen=True, slots=True)
class SharedServer:
    """An embedded server as one user sees it; `joined` when another process had started it already."""

    kind: Kind
    url: str
    detail: str
    joined: bool


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a thread, off the event loop; run to completion even if the caller is cancelled meanwhile
    (the registry lock is held around it and must not be released while it still reads or writes)."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait({work})
        raise


def _private_append(path: Path) -> int:
    """An fd appending to `path`, created 0600, never through a link."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)


def _open_lock(var_dir: Path) -> IO[str]:
    private_dir(var_dir)
    tighten(var_dir)
    return os.fdopen(_private_append(var_dir / LOCK_FILE), "a")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        data = {}  # a torn or foreign file: start afresh (live servers are found again by their keepers)
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    write_private(path, json.dumps(data, indent=2, sort_keys=True).encode())


@contextlib.asynccontextmanager
async def locked(var_dir: Path) -> AsyncIterator[dict[str, Any]]:
    """The registry, read and (when the block ends without error) written back, under the directory's lock.

    The lock is polled without blocking and the file is read and written in a thread: the event loop of the
    process waiting for it keeps answering signals.
    """
    lock = await _in_thread(_open_lock, var_dir)
    try:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(LOCK_POLL_S)
        path = var_dir / REGISTRY_FILE
        data = await _in_thread(_read, path)
        before = json.dumps(data, sort_keys=True)
        yield data
        if json.dumps(data, sort_keys=True) != before:
            await _in_thread(_write, path, data)
    finally:
        lock.close()  # releases the lock


def live_users(entry: dict[str, Any]) -> list[ProcessRef]:
    refs = (ProcessRef.load(raw) for raw in entry.get("users", []))
    return [ref for ref in refs if ref is not None and ref.alive()]


@dataclass(frozen=True, slots=True)
class _Step:
    state: Literal["wait", "ready", "failed"]
    entry: dict[str, Any]
    spawned: bool = False  # this call started the keeper


def _spawn_keeper(kind: Kind, var_dir: Path, project_dir: Path) -> ProcessRef:
    """Start a keeper detached from us (own session, no death signal): it outlives the user that started it."""
    with os.fdopen(_private_append(var_dir / KEEPER_LOG), "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
            [sys.executable, "-m", "devstack.embedded.keeper", kind, str(var_dir), str(project_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=project_dir,
            start_new_session=True,
            umask=0o077,  # what it writes under var/ (server data, logs) is this account's alone
        )
    return ProcessRef.of(proc.pid)


async def _join(kind: Kind, var_dir: Path, project_dir: Path, me: ProcessRef) -> _Step:
    async with locked(var_dir) as data:
        entry = data.get(kind)
        if isinstance(entry, dict):
            keeper = ProcessRef.load(entry.get("keeper"))
            users = [ref for raw in entry.get("users", []) if (ref := ProcessRef.load(raw)) is not None]
            if entry.get("state") == "starting" and me in users and (keeper is None or not keeper.alive()):
                # The keeper we wait for died before it could say why: every waiting user fails now.
                entry["state"] = "failed"
                log = var_dir / KEEPER_LOG
                entry["error"] = f"the keeper of the embedded {kind} exited during start-up (see {log})"
            if entry.get("state") == "failed" and me in users:
                entry["users"] = [u.dump() for u in users if u != me]
                return _Step("failed", entry)
            if keeper is None or not keeper.alive():
                server = ProcessRef.load(entry.get("server"))
                if server is not None and server.alive():
                    return _Step("wait", entry)  # its keeper died: the server is going down, let it finish
                entry = None
        spawned = not isinstance(entry, dict)
        if not isinstance(entry, dict):
            keeper_ref = await _in_thread(_spawn_keeper, kind, var_dir, project_dir)
            entry = {"state": "starting", "keeper": keeper_ref.dump(), "users": []}
            data[kind] = entry
        if entry.get("state") == "stopping":
            return _Step("wait", entry)  # the last user just left; a fresh server starts once it is down
        users = live_users(entry)
        if me not in users:
            entry["users"] = [u.dump() for u in [*users, me]]
        return _Step("ready" if entry.get("state") == "ready" else "wait", dict(entry), spawned)


async def _leave(kinds: Sequence[Kind], var_dir: Path, me: ProcessRef) -> bool:
    """Drop `me` from the users; True if no live user is left (the keeper stops the server then)."""
    left = False
    async with locked(var_dir) as data:
        for kind in kinds:
            entry = data.get(kind)
            if isinstance(entry, dict):
                users = [u for u in live_users(entry) if u != me]
                entry["users"] = [u.dump() for u in users]
                left = left or not users
    return left


async def _add(kinds: Sequence[Kind], var_dir: Path, ref: ProcessRef) -> None:
    async with locked(var_dir) as data:
        for kind in kinds:
            entry = data.get(kind)
            if isinstance(entry, dict) and entry.get("state") == "ready":
                users = live_users(entry)
                if ref not in users and ref.alive():
                    entry["users"] = [u.dump() for u in [*users, ref]]


@dataclass(frozen=True, slots=True)
class ServerUsers:
    """The embedded servers one `conveyor run` uses, so the processes it starts count as their users too:
    if `conveyor run` itself is killed, the servers stay up until the last of its children has exited."""

    var_dir: Path
    kinds: tuple[Kind, ...]

    async def add(self, pid: int) -> ProcessRef:
        """Register process `pid` (just started) as a user of every server."""
        ref = ProcessRef.of(pid)
        if self.kinds:
            await _add(self.kinds, self.var_dir, ref)
        return ref

    async def drop(self, ref: ProcessRef) -> None:
        """Unregister a process that has exited (the keepers would skip it anyway: it is no longer alive)."""
        if self.kinds:
            await _leave(self.kinds, self.var_dir, ref)


async def _stopped_or_used(kind: Kind, var_dir: Path) -> bool:
    """True once the server's keeper is gone, or someone uses the server again (then it keeps running)."""
    async with locked(var_dir) as data:
        entry = data.get(kind)
        if not isinstance(entry, dict):
            return True
        keeper = ProcessRef.load(entry.get("keeper"))
        if keeper is None or not keeper.alive():
            return True
        return entry.get("state") != "stopping" and bool(live_users(entry))


@contextlib.asynccontextmanager
async def shared_server(kind: Kind, var_dir: Path, project_dir: Path) -> AsyncIterator[SharedServer]:
    """Use the embedded server of `kind` for `var_dir` (absolute, like `project_dir`), starting it if none runs;
    leave it when the block ends.

    When this was the last user, wait (bounded) until the server has stopped, so it is down when we exit;
    not if another user joins meanwhile: the server then keeps running for it.

    Raises:
        EmbeddedServerError: the server could not start (the message holds the server's log tail).
    """
    me = ProcessRef.of(os.getpid())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    joined = True  # until this process turns out to be the one that started the server
    try:
        while True:
            step = await _join(kind, var_dir, project_dir, me)
            joined = joined and not step.spawned
            if step.state == "failed":
                raise EmbeddedServerError(str(step.entry.get("error") or f"the embedded {kind} failed to start"))
            if step.state == "ready":
                break
            if loop.time() >= deadline:
                raise EmbeddedServerError(
                    f"the embedded {kind} did not start within {START_TIMEOUT_S:g} s (see {var_dir / KEEPER_LOG})"
                )
            await asyncio.sleep(POLL_S)
    except BaseException:
        await _leave((kind,), var_dir, me)
        raise
    try:
        yield SharedServer(kind, str(step.entry["url"]), str(step.entry.get("detail", "")), joined=joined)
    finally:
        if await _leave((kind,), var_dir, me):
            stop_deadline = loop.time() + STOP_TIMEOUT_S
            while not await _stopped_or_used(kind, var_dir):
                if loop.time() >= stop_deadline:
                    break
                await asyncio.sleep(POLL_S)
