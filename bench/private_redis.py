"""The bench's own Redis servers, started and stopped by the bench: one for the cache role (rate limits,
progress, events) and, unless `--shared-jobs-redis`, one for the jobs (arq's queues; the arq baselines run
there too). So a server's INFO counters are one role's cost alone, with no other client's commands in them:
Redis commands per job is the jobs' enqueue, claim, run and finish, and the cache's is counted apart.

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

from conveyor_stack import die_with_parent
from harness import BenchError, Config, run
from redis.asyncio import Redis
from redis.exceptions import RedisError

from devstack.embedded.process import EmbeddedServerError, free_port
from devstack.embedded.redis_server import find_redis_server

START_S = 15.0


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else "(no log)"


async def _answers(role: str, url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_S
    client = Redis.from_url(url, socket_connect_timeout=1)
    try:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise BenchError(f"the {role} redis-server exited with {server.returncode}:\n{_tail(log)}")
            with contextlib.suppress(OSError, RedisError):
                if await client.ping():
                    return
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    raise BenchError(f"the {role} redis-server did not answer within {START_S:g} s:\n{_tail(log)}")


@contextlib.contextmanager
def private_redis(role: str) -> Iterator[str]:
    """The URL (with its password, no database) of a throwaway redis-server for `role`, for the block."""
    try:
        binary = find_redis_server()
    except EmbeddedServerError as exc:
        raise BenchError(f"no redis-server for the bench's {role}: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix=f"conveyor-bench-{role}-") as tmp:
        directory, password, port = Path(tmp), secrets.token_hex(16), free_port()
        config = directory / "redis.conf"
        config.touch(mode=0o600)
        config.write_text(f"requirepass {password}\n")
        log = directory / "redis.log"
        argv = [str(binary), str(config), "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp]
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(log)]
        server = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # the bench is single-threaded
        )
        try:
            base = f"redis://:{password}@127.0.0.1:{port}"
            run(_answers(role, base, server, log))
            yield base
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@contextlib.contextmanager
def private_servers(cfg: Config) -> Iterator[Config]:
    """`cfg` with its cache (and, when `jobs_redis` is "own", its jobs) on the bench's own redis-servers."""
    with contextlib.ExitStack() as stack:
        if cfg.jobs_redis == "own":
            cfg = replace(cfg, redis_base=stack.enter_context(private_redis("jobs")))
        yield replace(cfg, cache_base=stack.enter_context(private_redis("cache")))
