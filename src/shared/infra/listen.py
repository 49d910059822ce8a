"""Starting an HTTP listener with a one-line error a terminal can show when its address cannot be had."""

from __future__ import annotations

import errno
import os
from typing import Final

from aiohttp import web

# What only bind() says: the address is taken, or is not one of this host's.
BIND_ERRORS: Final = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL})


class AddressUnavailable(RuntimeError):
    """A configured address cannot be listened on; the message is one line for a terminal."""


def bind_failure(exc: OSError) -> str | None:
    """Why `exc` says an address cannot be listened on ("address already in use"), or None for any other error."""
    return os.strerror(exc.errno).lower() if exc.errno in BIND_ERRORS else None


async def start_site(runner: web.AppRunner, host: str, port: int, *, serves: str, settings: str) -> int:
    """Start `runner` (set up) on `host:port` and return the bound port (a free one for port 0).

    Raises:
        AddressUnavailable: the address is taken or not this host's; the message names what it `serves` and
            the `settings` that move it. The runner is cleaned up first.
    """
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if (reason := bind_failure(exc)) is None:
            raise
        raise AddressUnavailable(f"cannot serve {serves} on {host}:{port}: {reason} (set {settings})") from None
    return int(runner.addresses[0][1])
