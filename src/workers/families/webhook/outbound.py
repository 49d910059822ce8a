"""The worker's one outbound HTTP client (webhooks): timeouts, no cookies, no proxies, and the SSRF guard.

The guard sits in the connector, on the addresses actually connected to: the resolver drops every refused
address a name resolves to (so the connect uses exactly the vetted ones and a DNS answer cannot change
between check and use), and the socket factory checks every address again before it connects, which also
covers IP literals (aiohttp never asks the resolver about those). Unless WEBHOOK_ALLOW_PRIVATE is set.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from shared.core.settings import WebhookConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]

# Cloud instance-metadata endpoints (AWS, GCP, Azure, ECS, Oracle, Alibaba, AWS over IPv6). Most are
# link-local or shared space anyway; naming them gives the refusal a clear reason.
METADATA: Final = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "169.254.169.253", "100.100.100.200", "192.0.0.192", "fd00:ec2::254")
)
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")


# Said with every refusal, so whoever reads the failed job learns which setting lifts the guard.
ALLOW_PRIVATE_HINT: Final = "WEBHOOK_ALLOW_PRIVATE=true allows private destinations (for development only)"


class AddressRefused(OSError):
    """The target resolves only to addresses webhooks may not reach (loopback, private, metadata...).

    Its message names the refused address and why, then ALLOW_PRIVATE_HINT.
    """

    def __init__(self, refused: str) -> None:
        super().__init__(f"{refused}; {ALLOW_PRIVATE_HINT}")


def refusal(ip: IPAddress) -> str | None:
    """Why an address may not be reached from a webhook, or None when it may (a globally routable one)."""
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        return refusal(embedded)
    if ip in METADATA:
        return "cloud metadata"
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.ip_network("fc00::/7"), "unique-local"),
        (ip.is_reserved, "reserved"),
        (ip.is_private, "private"),
        (not ip.is_global, "not globally routable"),
    )
    return next((reason for hit, reason in checks if hit), None)


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped ::ffff:a.b.c.d, 6to4, NAT64), which is what is reached."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def shown(ip: IPAddress) -> str:
    """The address as a refusal names it, with the IPv4 address an IPv6 one stands for."""
    embedded = _embedded_ipv4(ip)
    return f"{ip} (that is {embedded})" if embedded is not None else str(ip)


def parse_ip(host: str) -> IPAddress:
    return ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 scope (fe80::1%eth0) is not part of it


class GuardedResolver(AbstractResolver):
    """Resolves with aiohttp's default resolver and keeps only the addresses a webhook may reach."""

    def __init__(self) -> None:
        self._inner = aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        resolved = await self._inner.resolve(host, port, family)
        allowed = [r for r in resolved if refusal(parse_ip(r["host"])) is None]
        if not allowed:
            reasons = sorted({f"{shown(parse_ip(r['host']))} ({refusal(parse_ip(r['host']))})" for r in resolved})
            raise AddressRefused(f"refused {host}, which resolves only to refused addresses: {', '.join(reasons)}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def guarded_socket(addr_info: AddrInfo) -> socket.socket:
    """The connector's socket factory: the last check, on the very address about to be connected to."""
    family, type_, proto, _, sockaddr = addr_info
    ip = parse_ip(str(sockaddr[0]))
    reason = refusal(ip)
    if reason is not None:
        raise AddressRefused(f"refused {shown(ip)}, a {reason} address")
    return socket.socket(family=family, type=type_, proto=proto)


def connector(config: WebhookConfig) -> aiohttp.TCPConnector:
    if config.allow_private:
        return aiohttp.TCPConnector()
    return aiohttp.TCPConnector(resolver=GuardedResolver(), socket_factory=guarded_socket)


@contextlib.asynccontextmanager
async def open_http(config: WebhookConfig) -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=config.timeout_s, connect=config.timeout_s)
    async with aiohttp.ClientSession(
        connector=connector(config), timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
    ) as session:
        yield session
