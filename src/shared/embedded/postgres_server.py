"""The embedded PostgreSQL: a private cluster on a free 127.0.0.1 port with trust auth, kept between runs."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import asyncpg

from shared.embedded.process import (
    HOST,
    Account,
    EmbeddedServerError,
    ServerProcess,
    free_port,
    run_quiet,
    wait_exit,
)

logger = logging.getLogger(__name__)

POSTGRES_MISSING: Final = (
    "PostgreSQL server binaries not found; install them (Debian: apt-get install postgresql) or set DATABASE_URL"
)
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


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


def _own_dir(home: Path, account: Account, *, open_parent: bool) -> None:
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


class EmbeddedPostgres(ServerProcess):
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

    @property
    def detail(self) -> str:
        return f"data in {self.home or self.data_dir}"

    async def start(self) -> None:
        binaries = find_postgres()
        account = Account.lookup("postgres") if os.geteuid() == 0 else None
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

    async def _prepare_home(self, account: Account | None) -> Path:
        if account is None:
            await asyncio.to_thread(self.data_dir.mkdir, parents=True, exist_ok=True)
            return self.data_dir
        await asyncio.to_thread(self.data_dir.parent.mkdir, parents=True, exist_ok=True)
        # `test -x` as postgres fails if any directory on the way is not searchable by that user.
        probe: list[str | Path] = [shutil.which("test") or "/usr/bin/test", "-x", self.data_dir.parent]
        if await run_quiet(probe, account=account, cwd=Path("/"), timeout_s=10) == 0:
            await asyncio.to_thread(_own_dir, self.data_dir, account, open_parent=False)
            return self.data_dir
        home = fallback_home(self.project_dir)
        logger.warning("embedded.postgres_fallback_dir", extra={"unreachable": str(self.data_dir), "dir": str(home)})
        await asyncio.to_thread(_own_dir, home, account, open_parent=True)
        return home

    async def _initdb(self, binaries: PostgresBinaries, pgdata: Path, account: Account | None, log_path: Path) -> None:
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
        if not await wait_exit(proc, 120):
            proc.kill()
            await wait_exit(proc, 5)
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
