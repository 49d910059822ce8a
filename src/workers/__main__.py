"""Entry point: `python -m workers <process>` loads WorkerSettings, configures logging, runs it until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

from pydantic import ValidationError

from shared.logging import configure_logging
from shared.settings import WorkerSettings, describe_errors
from workers.processes import PROCESSES, WorkerProcess


async def _serve(process: WorkerProcess) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, process.stop)
    await process.run()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in PROCESSES:
        print(f"usage: python -m workers {{{'|'.join(PROCESSES)}}}", file=sys.stderr)  # noqa: T201
        return 2
    try:
        settings = WorkerSettings()
    except ValidationError as exc:
        print(*describe_errors(exc, "workers"), sep="\n", file=sys.stderr)  # noqa: T201
        return 2
    configure_logging(settings.log, role=f"worker:{args[0]}")
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(_serve(WorkerProcess(PROCESSES[args[0]], settings)))
    else:
        uvloop.run(_serve(WorkerProcess(PROCESSES[args[0]], settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
