"""The embedded PostgreSQL: a private cluster on a free 127.0.0.1 port, password-protected, kept between runs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import asyncpg

from devstack.embedded.private import DIR_MODE, open_dir, private_dir, scram_verifier, stored_password, write_private
from devstack.embedded.process import HOST, Account, EmbeddedServerError, ServerProcess, free_port, run_quiet, wait_exit

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
    """Where PostgreSQL's data goes first when user postgres cannot reach the project directory.

    Used only while its parent is a directory of ours (see `_claim_fallback`): anyone may create this path
    in /var/tmp before we do.
    """
    digest = hashlib.sha1(str(project_dir.resolve()).encode(), usedforsecurity=False).hexdigest()[:10]
    return Path("/var/tmp") / f"conveyor-{digest}" / "pg"  # noqa: S108 - checked as ours before use, see below


def _searchable_if_ours(path: Path) -> bool:
    """True if `path` is a real directory of ours no one else may write into; it is made 0755 (so user
    postgres can pass through it to its own 0700 directory). The check and chmod use one fd opened without
    following links, so what is checked is what is changed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False  # absent, a symbolic link, not a directory
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or info.st_mode & 0o022:
            return False
        os.fchmod(fd, 0o755)
        return True
    finally:
        os.close(fd)


def _claim_fallback(project_dir: Path, record: Path) -> Path:
    """A home for the cluster in /var/tmp, inside a directory this account created: the one `record` names
    (a fresh directory made by an earlier run), else `fallback_home`'s when it is ours or can be made now,
    else a fresh one (`mkdtemp`), named in `record` so later runs find the cluster again.

    Another account may have planted a link or a directory of its own at the default path; neither is
    ever followed or used: root would otherwise create and chown directories wherever the link points.
    """
    default = fallback_home(project_dir)
    recorded = Path(record.read_text().strip()) if record.is_file() and not record.is_symlink() else None
    in_var_tmp = recorded is not None and recorded.parent.parent == default.parent.parent
    if recorded is not None and in_var_tmp and _searchable_if_ours(recorded.parent):
        return recorded
    with contextlib.suppress(FileExistsError):
        os.mkdir(default.parent, 0o755)
    if _searchable_if_ours(default.parent):
        return default
    fresh = Path(tempfile.mkdtemp(prefix=f"{default.parent.name}-", dir=default.parent.parent)) / default.name
    if not _searchable_if_ours(fresh.parent):  # pragma: no cover - mkdtemp made it ours a moment ago
        raise EmbeddedServerError(f"cannot prepare {fresh.parent}")
    write_private(record, f"{fresh}\n".encode())
    logger.warning("embedded.postgres_fallback_taken", extra={"taken": str(default.parent), "dir": str(fresh)})
    return fresh


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


def _own_dir(home: Path, account: Account) -> None:
    """Create `home` (0700) owned by `account`, inside a parent only we control; a link there is refused."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(home, DIR_MODE)
    with open_dir(home) as fd:
        os.fchown(fd, account.uid, account.gid)
        os.fchmod(fd, DIR_MODE)


_HBA: Final = """\
# Written by conveyor at every start of the embedded server: TCP from 127.0.0.1 only, with the password
# kept in the project's var/pg.password; every other account on this machine can reach that port.
host all all 127.0.0.1/32 scram-sha-256
"""


def _cluster_version(pgdata: Path) -> str | None:
    version_file = pgdata / "PG_VERSION"
    return version_file.read_text().strip() if version_file.exists() else None


async def _postgres_answers(port: int, password: str) -> bool:
    try:
        conn = await asyncpg.connect(
            host=HOST, port=port, user="postgres", password=password, database="postgres", timeout=2
        )
    except asyncpg.InvalidAuthorizationSpecificationError as exc:
        raise EmbeddedServerError(f"the embedded postgres refused its own password: {exc}") from exc
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False  # refused, or "the database system is starting up"
    await conn.close()
    return True


class EmbeddedPostgres(ServerProcess):
    """A private PostgreSQL on a free 127.0.0.1 port; the cluster persists between runs.

    Every account on the machine can reach that port, so only the superuser `postgres` with the password
    kept in `password_file` (default `<data_dir>.password`, 0600) gets in (scram-sha-256); `url` carries it.
    The cluster lives in `<data_dir>/data` with the server log beside it. As root the server runs as user
    `postgres`; if that user cannot reach `data_dir`, the cluster goes under /var/tmp (`_claim_fallback`).
    """

    kind = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back sessions, checkpoint, exit

    def __init__(
        self,
        data_dir: Path = Path("var/pg"),
        *,
        database: str = "conveyor",
        project_dir: Path | None = None,
        password_file: Path | None = None,
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s)
        if not _DB_NAME.match(database):
            raise ValueError(f"database name must match {_DB_NAME.pattern}")
        self.data_dir = data_dir.resolve()
        self.database = database
        self.project_dir = (project_dir or Path.cwd()).resolve()
        self.password_file = password_file or self.data_dir.with_name(f"{self.data_dir.name}.password")
        self.password = ""
        self.home: Path | None = None

    @property
    def url(self) -> str:
        """`postgresql://postgres:PASSWORD@127.0.0.1:PORT/<database>`: a secret, never for a log line."""
        if self.port is None:
            raise EmbeddedServerError("the embedded postgres is not running")
        return f"postgresql://postgres:{self.password}@{HOST}:{self.port}/{self.database}"

    @property
    def detail(self) -> str:
        return f"data in {self.home or self.data_dir}; password in {self.password_file}"

    async def start(self) -> None:
        binaries = find_postgres()
        account = Account.lookup("postgres") if os.geteuid() == 0 else None
        self.password = await asyncio.to_thread(stored_password, self.password_file)
        self.home = home = await self._prepare_home(account)
        pgdata, log_path = home / "data", home / "postgres.log"
        self.log_path = log_path
        await self._initdb(binaries, pgdata, account, log_path)
        await self._lock_down(binaries, pgdata, account, log_path)
        self.port = port = free_port()
        # `-k ""`: no Unix socket (long project paths overflow sun_path, and TCP is all we use).
        argv: list[str | Path] = [binaries.postgres, "-D", pgdata, "-p", str(port), "-h", HOST, "-k", ""]
        self._spawn(argv, log_path=log_path, cwd=home, account=account, env=_server_env())
        await self._await_ready(lambda: _postgres_answers(port, self.password))
        await self._ensure_database()

    async def _prepare_home(self, account: Account | None) -> Path:
        if account is None:
            await asyncio.to_thread(private_dir, self.data_dir)
            return self.data_dir
        await asyncio.to_thread(private_dir, self.data_dir.parent)
        # `test -x` as postgres fails if any directory on the way is not searchable by that user.
        probe: list[str | Path] = [shutil.which("test") or "/usr/bin/test", "-x", self.data_dir.parent]
        if await run_quiet(probe, account=account, cwd=Path("/"), timeout_s=10) == 0:
            await asyncio.to_thread(_own_dir, self.data_dir, account)
            return self.data_dir
        record = self.data_dir.with_name(f"{self.data_dir.name}.fallback")
        home = await asyncio.to_thread(_claim_fallback, self.project_dir, record)
        logger.warning("embedded.postgres_fallback_dir", extra={"unreachable": str(self.data_dir), "dir": str(home)})
        await asyncio.to_thread(_own_dir, home, account)
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
        # `reject` until `_lock_down` writes the real rules and sets the password: no window without one.
        argv: list[str | Path] = [binaries.initdb, "-D", pgdata, "-U", "postgres", "--auth=reject", "-E", "UTF8"]
        argv += ["--no-locale", "--no-sync"]
        proc = self._open_child(
            argv, log_path=log_path, cwd=pgdata.parent, account=account, env=_server_env(), parent_death=signal.SIGKILL
        )
        if not await wait_exit(proc, 120):
            proc.kill()
            await wait_exit(proc, 5)
        if proc.returncode != 0:
            raise self.failure(f"initdb failed (exit code {proc.returncode})")

    async def _lock_down(
        self, binaries: PostgresBinaries, pgdata: Path, account: Account | None, log_path: Path
    ) -> None:
        """Before every start: pg_hba.conf allows only the password over TCP, and the superuser's password is
        the stored one. A cluster made by an older version (trust for everyone) is converted the same way.

        The password is set in single-user mode (no server listens meanwhile), as a SCRAM verifier on stdin:
        never on a command line (visible to every account) nor in plain text in the server's log.
        """

        def write_hba() -> None:
            hba = pgdata / "pg_hba.conf"
            write_private(hba, _HBA.encode())
            if account is not None:
                os.chown(hba, account.uid, account.gid, follow_symlinks=False)

        await asyncio.to_thread(write_hba)
        statement = f"ALTER ROLE postgres PASSWORD '{scram_verifier(self.password)}'\n"
        argv: list[str | Path] = [binaries.postgres, "--single", "-D", pgdata, "-c", "log_statement=none", "postgres"]
        proc = self._open_child(
            argv, log_path=log_path, cwd=pgdata.parent, account=account, env=_server_env(),
            parent_death=signal.SIGKILL, stdin=subprocess.PIPE,
        )  # fmt: skip
        stdin = proc.stdin
        assert stdin is not None  # noqa: S101 - opened with stdin=PIPE

        def feed() -> None:
            with contextlib.suppress(BrokenPipeError):  # it failed at once: the exit code says so
                stdin.write(statement.encode())
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

        await asyncio.to_thread(feed)
        if not await wait_exit(proc, 120):
            proc.kill()
            await wait_exit(proc, 5)
        if proc.returncode != 0:
            raise self.failure(f"setting the password in single-user mode failed (exit code {proc.returncode})")

    async def _ensure_database(self) -> None:
        conn = await asyncpg.connect(
            host=HOST, port=self.port, user="postgres", password=self.password, database="postgres", timeout=10
        )
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", self.database):
                await conn.execute(f'CREATE DATABASE "{self.database}"')  # name checked against _DB_NAME
                logger.info("embedded.database_created", extra={"database": self.database})
        finally:
            await conn.close()
