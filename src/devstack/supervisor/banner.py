"""What `conveyor run` prints once every child is up: URLs, an admin token (development only), each child's pid
and port."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final

import jwt

from devstack.embedded import HOST
from devstack.supervisor.children import Child
from shared.core.settings import AuthConfig, Environment, GatewayConfig

ADMIN_TOKEN_TTL_S: Final = 24 * 3600


def mint_token(auth_config: AuthConfig, sub: str, role: str = "user", ttl_s: int = 3600) -> str:
    """An HS256 JWT the gateway accepts: `sub`, `role`, `iat`, `exp`, plus `iss`/`aud` when configured."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "role": role, "iat": now, "exp": now + ttl_s}
    if auth_config.jwt_issuer:
        claims["iss"] = auth_config.jwt_issuer
    if auth_config.jwt_audience:
        claims["aud"] = auth_config.jwt_audience
    return jwt.encode(claims, auth_config.jwt_secret.get_secret_value(), algorithm="HS256")


def local_host(host: str) -> str:
    """The host part of a URL a local client uses to reach a server bound to `host`."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - mapping a wildcard bind to loopback, not binding
        host = HOST
    return f"[{host}]" if ":" in host else host


def gateway_url(config: GatewayConfig) -> str:
    """The URL a local client uses to reach the gateway bound as configured."""
    return f"http://{local_host(config.host)}:{config.port}"


def admin_token_rows(auth: AuthConfig) -> list[tuple[str, str]]:
    """A ready-to-use admin token, in development only: anywhere else, a token printed to a terminal (and so to
    its scrollback, a CI log or a screen share) is an admin credential nobody asked for."""
    if auth.environment is not Environment.DEVELOPMENT:
        return [("admin token", "(none outside development: mint one with `conveyor token --sub NAME --role admin`)")]
    ttl_s = min(ADMIN_TOKEN_TTL_S, int(auth.jwt_max_lifetime_s))
    return [
        ("admin token", mint_token(auth, "admin", "admin", ttl_s)),
        ("", f"({ttl_s / 3600:g} h; more with `conveyor token --sub NAME [--role admin]`)"),
    ]


def banner(
    children: Sequence[Child],
    gateway: GatewayConfig,
    auth: AuthConfig,
    notes: Sequence[tuple[str, str]],
    metrics_host: str,
) -> str:
    """The lines printed once everything is up (labels aligned; a worker line: `default-1  pid …, metrics …`)."""
    rows: list[tuple[str, str]] = []
    for child in children:
        if child.spec.is_gateway:
            url = gateway_url(gateway)
            rows += [("gateway", f"{url}  (pid {child.pid}; readiness: {url}/ready)"), *admin_token_rows(auth)]
        else:
            metrics = f"http://{local_host(metrics_host)}:{child.metrics_port}/metrics"
            rows.append((child.name, f"pid {child.pid}, metrics {metrics}"))
    rows += notes
    width = max(len(label) for label, _ in rows)
    lines = ["", "Conveyor is running", *(f"  {label:<{width}} {text}" for label, text in rows)]
    lines += ["A process that crashes is restarted. Press Ctrl-C to stop.", ""]
    return "\n".join(lines)
