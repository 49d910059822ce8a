"""Entry point: load GatewaySettings, configure logging, run create_app(settings) until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import sys

from aiohttp import web
from pydantic import ValidationError

from gateway.app import create_app
from shared.logging import configure_logging
from shared.settings import GatewaySettings, describe_errors

# The HTTP parser's limits, stated rather than inherited: a longer request line or header is refused with a
# 400 before any handler runs (aiohttp's defaults today, pinned here so an upgrade cannot loosen them).
MAX_LINE_BYTES = MAX_FIELD_BYTES = 8190
MAX_HEADERS = 128


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
