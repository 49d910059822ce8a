"""The bench's own Redis for the cache role (db 0: rate limits, progress, events), started and stopped by the
bench, so the shared server's INFO counters are the jobs' cost alone and the cache's are counted apart.

Throwaway: no persistence, a free 127.0.0.1 port, and a password (any account on the machine can reach the
port) that reaches the server in a 0600 config file, never on its command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from harness import BenchError, Config, run
from redis.asyncio import Redis
from redis.exceptions import RedisError

from devstack.embedded.process import EmbeddedServerError, free_port
from devstack.embedded.redis_server import find_redis_server

START_S = 15.0


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else "(no log)"


async def _answers(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_S
    client = Redis.from_url(url, socket_connect_timeout=1)
    try:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise BenchError(f"the cache redis-server exited with {server.returncode}:\n{_tail(log)}")
            with contextlib.suppress(OSError, RedisError):
                if await client.ping():
                    return
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    raise BenchError(f"the cache redis-server did not answer within {START_S:g} s:\n{_tail(log)}")


@contextlib.contextmanager
def cache_server(cfg: Config) -> Iterator[Config]:
    """`cfg` with its cache on a private redis-server for the duration of the block."""
    try:
        binary = find_redis_server()
    except EmbeddedServerError as exc:
        raise BenchError(f"no redis-server for the bench's cache: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-cache-") as tmp:
        directory, password, port = Path(tmp), secrets.token_hex(16), free_port()
        config = directory / "redis.conf"
        config.touch(mode=0o600)
        config.write_text(f"requirepass {password}\n")
        log = directory / "redis.log"
        argv = [str(binary), str(config), "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp]
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(log)]
        server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            base = f"redis://:{password}@127.0.0.1:{port}"
            run(_answers(base, server, log))
            yield replace(cfg, cache_base=base)
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
