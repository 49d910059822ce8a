"""Which client a request comes from, for the per-address limits: the peer, or the hop your proxies recorded.

`X-Forwarded-For` is a list each proxy appends to, so only its right-most entries are trustworthy: the
left-most is whatever the client sent. With `TRUST_X_FORWARDED_FOR=true`, the client is the entry
`FORWARDED_FOR_HOPS` places from the right (1: the address your one proxy saw). IPv6 clients are keyed by
their /64, the block one subscriber is given, so rotating through it does not buy fresh limits.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

from gateway.keys import SETTINGS

IPV6_PREFIX = 64


def client_ip(request: web.Request) -> str:
    """The address a request is limited by: the peer, or the trusted X-Forwarded-For hop; IPv6 as its /64."""
    security = request.app[SETTINGS].security
    address = _forwarded(request, security.forwarded_for_hops) if security.trust_forwarded_for else None
    return key(address or request.remote or "unknown")


def _forwarded(request: web.Request, hops: int) -> str | None:
    entries = [e.strip() for v in request.headers.getall("X-Forwarded-For", ()) for e in v.split(",")]
    entries = [e for e in entries if e]
    return entries[-hops] if len(entries) >= hops else None


def key(address: str) -> str:
    """`address` as a limiter key: an IPv4 address as is, an IPv6 one as its /64 network, else unchanged."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)
