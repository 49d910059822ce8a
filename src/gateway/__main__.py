"""Entry point: load GatewaySettings, configure logging, run create_app(settings) until SIGTERM/SIGINT.

`--ready-fd N` has it write one JSON line, `{"listening": "HOST:PORT"}`, to that inherited pipe once it
listens (its start-up hooks done and its socket bound), then close it: how `conveyor run` knows it is up.
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
from typing import Any

from aiohttp import web
from aiohttp.web_runner import GracefulExit
from pydantic import ValidationError

from gateway.app import create_app
from gateway.routes.health import MetricsListenerUnavailable
from shared.core import json
from shared.core.logging import configure_logging
from shared.core.settings import GatewaySettings, describe_errors
from shared.infra.listen import bind_failure
from shared.infra.parent import follow_parent

# The HTTP parser's limits, stated rather than inherited: a longer request line or header is refused with a
# 400 before any handler runs (aiohttp's defaults today, pinned here so an upgrade cannot loosen them).
MAX_LINE_BYTES = MAX_FIELD_BYTES = 8190
MAX_HEADERS = 128


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway", description="Run the Conveyor gateway.")
    parser.add_argument("--ready-fd", type=int, metavar="FD", help="pipe to report readiness on")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    follow_parent()  # started by `conveyor run`: stop when it dies (see _stop_once)
    try:
        settings = GatewaySettings()
    except ValidationError as exc:
        print(*describe_errors(exc, "gateway"), sep="\n", file=sys.stderr)  # noqa: T201
        return 2
    configure_logging(settings.log, role="gateway")
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    logging.getLogger(__name__).info(
        "gateway.starting", extra={"host": settings.gateway.host, "port": settings.gateway.port}
    )
    address = f"{settings.gateway.host}:{settings.gateway.port}"
    reporter = _ReadyReporter(args.ready_fd, address)
    try:
        _serve(settings, loop_factory, reporter if args.ready_fd is not None else None)
    except OSError as exc:
        if (reason := bind_failure(exc)) is None:
            raise
        print(f"gateway: cannot listen on {address}: {reason} (set API_HOST / API_PORT)", file=sys.stderr)  # noqa: T201
        return 2
    except MetricsListenerUnavailable as exc:
        print(f"gateway: {exc}", file=sys.stderr)  # noqa: T201 - one line, not a traceback
        return 2
    finally:
        reporter.close()  # never up: the EOF tells a reader still waiting
    return 0


class _ReadyReporter:
    """Called by `run_app` once every site listens: its `print` hook, the one that runs after start-up and bind."""

    def __init__(self, fd: int | None, address: str) -> None:
        self.fd, self.address = fd, address

    def __call__(self, *_: Any) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):  # whoever started us is gone: nothing to tell
                os.write(self.fd, json.dumps({"listening": self.address}) + b"\n")
        self.close()

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


async def _stop_once(_: web.Application) -> None:
    """An `on_startup` hook (run once `run_app` has installed its own handlers): SIGTERM/SIGINT start one
    graceful stop, and copies change nothing. aiohttp's own handler would end the drain of in-flight
    requests at the next copy, and a dying `conveyor run` with threads sends several (see follow_parent)."""
    loop = asyncio.get_running_loop()
    requested = False

    def graceful_exit() -> None:
        nonlocal requested
        if not requested:
            requested = True
            raise GracefulExit

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, graceful_exit)


def _serve(
    settings: GatewaySettings,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
    on_listening: Callable[..., None] | None,
) -> None:
    app = create_app(settings)
    app.on_startup.append(_stop_once)
    web.run_app(
        app,
        host=settings.gateway.host,
        port=settings.gateway.port,
        shutdown_timeout=settings.gateway.shutdown_grace_s,
        access_log=None,
        print=on_listening,
        handle_signals=True,
        loop=loop_factory() if loop_factory else None,
        max_line_size=MAX_LINE_BYTES,
        max_field_size=MAX_FIELD_BYTES,
        max_headers=MAX_HEADERS,
    )


if __name__ == "__main__":
    sys.exit(main())
