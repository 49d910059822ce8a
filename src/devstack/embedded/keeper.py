"""`python -m devstack.embedded.keeper KIND VAR_DIR PROJECT_DIR`: own one shared embedded server while it is used.

Started (detached) by the first `conveyor run` of a directory that needs the server; records the server's
URL in the registry, then stops the server and exits once the registry lists no live user. The server is
this process's child with a death signal, so it never outlives its keeper.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Final, cast

from devstack.embedded.postgres_server import EmbeddedPostgres
from devstack.embedded.process import EmbeddedServerError, ServerProcess
from devstack.embedded.redis_server import EmbeddedRedis
from devstack.embedded.registry import Kind, ProcessRef, live_users, locked
from shared.core.logging import configure_logging
from shared.core.settings import LogConfig

logger = logging.getLogger("devstack.embedded.keeper")  # not "__main__" when run with -m

CHECK_INTERVAL_S: Final = 0.25
KINDS: Final = ("redis", "postgres")


def _unexpected(kind: Kind, exc: Exception) -> str:
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"the embedded {kind} failed to start: {reason}"


def _server(kind: Kind, var_dir: Path, project_dir: Path) -> ServerProcess:
    if kind == "redis":
        return EmbeddedRedis(var_dir / "redis")
    return EmbeddedPostgres(var_dir / "pg", project_dir=project_dir)


class Keeper:
    """Runs one server for the registry entry of `kind`, as long as that entry names this process."""

    def __init__(self, kind: Kind, var_dir: Path, project_dir: Path) -> None:
        self.kind = kind
        self.var_dir = var_dir
        self.server = _server(kind, var_dir, project_dir)
        self.me = ProcessRef.of(os.getpid())
        self.stop = asyncio.Event()

    async def _update(self, **fields: Any) -> bool:
        """Merge `fields` into our entry; False if the entry is no longer ours."""
        async with locked(self.var_dir) as data:
            entry = data.get(self.kind)
            if not isinstance(entry, dict) or ProcessRef.load(entry.get("keeper")) != self.me:
                return False
            entry.update(fields)
            return True

    async def _release_if_unused(self) -> bool:
        """Under the lock: with no live user left, mark the entry `stopping` (no one joins it) and say so."""
        async with locked(self.var_dir) as data:
            entry = data.get(self.kind)
            if not isinstance(entry, dict) or ProcessRef.load(entry.get("keeper")) != self.me:
                return True
            users = live_users(entry)
            entry["users"] = [u.dump() for u in users]
            if users:
                return False
            entry["state"] = "stopping"
            return True

    async def _forget(self) -> None:
        async with locked(self.var_dir) as data:
            entry = data.get(self.kind)
            if isinstance(entry, dict) and ProcessRef.load(entry.get("keeper")) == self.me:
                del data[self.kind]

    async def run(self) -> int:
        try:
            await self.server.start()
        except Exception as exc:  # noqa: BLE001 - whatever it is, the users waiting for the server must hear it
            await self.server.stop()
            reason = str(exc) if isinstance(exc, EmbeddedServerError) else _unexpected(self.kind, exc)
            logger.error("embedded.start_failed", extra={"server": self.kind, "reason": reason.splitlines()[0]})
            await self._update(state="failed", error=reason)
            return 1
        try:
            pid = self.server.pid
            server = ProcessRef.of(pid).dump() if pid else None
            if not await self._update(state="ready", url=self.server.url, detail=self.server.detail, server=server):
                return 0
            exited = asyncio.ensure_future(self.server.exited())
            while not exited.done() and not self.stop.is_set() and not await self._release_if_unused():
                await asyncio.wait({exited}, timeout=CHECK_INTERVAL_S)
            if exited.done():
                logger.error("embedded.server_exited", extra={"server": self.kind, "exit_code": exited.result()})
                return 1
            exited.cancel()
            logger.info("embedded.unused", extra={"server": self.kind})
            return 0
        finally:
            await self.server.stop()
            await self._forget()


async def _main(kind: Kind, var_dir: Path, project_dir: Path) -> int:
    keeper = Keeper(kind, var_dir, project_dir)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, keeper.stop.set)
    return await keeper.run()


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in KINDS:
        print(f"usage: python -m devstack.embedded.keeper {{{'|'.join(KINDS)}}} VAR_DIR PROJECT_DIR", file=sys.stderr)  # noqa: T201
        return 2
    configure_logging(LogConfig(format="json"), role=f"embedded:{argv[0]}")
    return asyncio.run(_main(cast(Kind, argv[0]), Path(argv[1]), Path(argv[2])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
