"""Entry point: load GatewaySettings, configure logging, run create_app(settings) until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sys
from collections.abc import Callable

from aiohttp import web
from pydantic import ValidationError

from gateway.app import create_app
from shared.logging import configure_logging
from shared.settings import GatewaySettings, describe_errors

# The HTTP parser's limits, stated rather than inherited: a longer request line or header is refused with a
# 400 before any handler runs (aiohttp's defaults today, pinned here so an upgrade cannot loosen them).
MAX_LINE_BYTES = MAX_FIELD_BYTES = 8190
MAX_HEADERS = 128
# What only bind() says: the address is taken, or is not one of this host's.
_BIND_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL})


def main() -> int:
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
    try:
        _serve(settings, loop_factory)
    except OSError as exc:
        if exc.errno not in _BIND_ERRORS:
            raise
        address = f"{settings.gateway.host}:{settings.gateway.port}"
        reason = os.strerror(exc.errno).lower()
        print(f"gateway: cannot listen on {address}: {reason} (set API_HOST / API_PORT)", file=sys.stderr)  # noqa: T201
        return 2
    return 0


def _serve(settings: GatewaySettings, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None) -> None:
    web.run_app(
        create_app(settings),
        host=settings.gateway.host,
        port=settings.gateway.port,
        shutdown_timeout=settings.gateway.shutdown_grace_s,
        access_log=None,
        print=None,
        handle_signals=True,
        loop=loop_factory() if loop_factory else None,
        max_line_size=MAX_LINE_BYTES,
        max_field_size=MAX_FIELD_BYTES,
        max_headers=MAX_HEADERS,
    )


if __name__ == "__main__":
    sys.exit(main())
