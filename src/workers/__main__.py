"""Entry point: `python -m workers <process>` loads WorkerSettings, configures logging, runs it until SIGTERM.

`--name` labels its log lines (`conveyor run` names its children `default-1`, …); `--ready-fd N` has it write
one JSON line, `{"metrics_port": PORT}`, to that inherited pipe once it takes jobs, then close it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable

from pydantic import ValidationError

from shared.core import json
from shared.core.logging import configure_logging
from shared.core.settings import WorkerSettings, describe_errors
from shared.infra.parent import follow_parent, parent_gone
from workers.health_server import PortUnavailable
from workers.processes import PROCESSES, WorkerProcess

logger = logging.getLogger("workers")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workers", description="Run one Conveyor worker process.")
    parser.add_argument("process", choices=list(PROCESSES))
    parser.add_argument("--name", help="this process's name in its log lines (default: the process)")
    parser.add_argument("--ready-fd", type=int, metavar="FD", help="pipe to report readiness on")
    return parser


def _report_ready(process: WorkerProcess, fd: int | None) -> None:
    host, port = process.settings.worker.metrics_host, process.metrics_port
    logger.info("worker.metrics_listening", extra={"url": f"http://{host}:{port}/metrics"})
    if fd is not None:
        with contextlib.suppress(OSError):  # whoever started us is gone: nothing to tell
            os.write(fd, json.dumps({"metrics_port": port}) + b"\n")


def _stop_handler(process: WorkerProcess, parent: int | None) -> Callable[[], None]:
    """SIGTERM/SIGINT: the first stops taking jobs (running ones get their grace period), a second cancels
    what still runs. Once the `conveyor run` that started us is gone, a repeat is only another copy of its
    death signal, and changes nothing."""
    requested = False

    def handler() -> None:
        nonlocal requested
        if requested and parent_gone(parent):
            return
        requested = True
        process.stop()

    return handler


async def _serve(process: WorkerProcess, ready_fd: int | None, parent: int | None) -> None:
    loop = asyncio.get_running_loop()
    stop = _stop_handler(process, parent)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    running = asyncio.ensure_future(process.run())
    started = asyncio.ensure_future(process.started())
    try:
        await asyncio.wait({running, started}, return_when=asyncio.FIRST_COMPLETED)
        if started.done():
            _report_ready(process, ready_fd)
    finally:
        started.cancel()
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.close(ready_fd)
    await running


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    parent = follow_parent()  # started by `conveyor run`: stop (gracefully) when it dies
    try:
        settings = WorkerSettings()
    except ValidationError as exc:
        print(*describe_errors(exc, "workers"), sep="\n", file=sys.stderr)  # noqa: T201
        return 2
    configure_logging(settings.log, role=f"worker:{args.name or args.process}")
    process = WorkerProcess(PROCESSES[args.process], settings)
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            asyncio.run(_serve(process, args.ready_fd, parent))
        else:
            uvloop.run(_serve(process, args.ready_fd, parent))
    except PortUnavailable as exc:
        print(f"workers: {exc}", file=sys.stderr)  # noqa: T201 - one line, not a traceback
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
