"""Safe defaults a client or an operator notices: security headers on every response, a maximum JWT lifetime,
/ready that says up or down only, and /metrics on a listener of its own outside development."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jwt
import pytest

from support.helpers import TEST_JWT_SECRET, eventually, make_token
from support.stack import (
    TEST_ENCRYPTION_KEY,
    Api,
    Conn,
    Services,
    free_port,
    gateway_settings,
    running_gateway,
)
from support.tcp_proxy import TcpProxy

EXPECTED = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


def _security_headers(resp: aiohttp.ClientResponse) -> dict[str, str | None]:
    return {name: resp.headers.get(name) for name in EXPECTED}


async def test_every_kind_of_response_carries_the_security_headers(api: Api) -> None:
    job = await api.submit("system.echo", {})
    seen: dict[str, tuple[int, dict[str, str | None]]] = {}
    calls = {
        "ok": ("GET", f"/api/v1/jobs/{job['id']}", {}),
        "unauthenticated": ("GET", "/api/v1/jobs", {"headers": {"Authorization": ""}}),
        "not found": ("GET", "/api/v1/no-such-thing", {}),
        "health": ("GET", "/health", {}),
    }
    for name, (method, path, options) in calls.items():
        status, _, resp = await api.request(method, path, **options)  # type: ignore[arg-type]
        seen[name] = (status, _security_headers(resp))

    assert {name: status for name, (status, _) in seen.items()} == {
        "ok": 200, "unauthenticated": 401, "not found": 404, "health": 200,
    }  # fmt: skip
    for name, (_, headers) in seen.items():
        assert headers == EXPECTED, name


async def test_a_refused_oversized_body_carries_the_security_headers(services: Services, pg: Conn) -> None:
    async with running_gateway(gateway_settings(services, max_body_bytes=1024)) as api:
        body = {"type": "system.echo", "payload": {"data": "x" * 4096}}
        status, problem, resp = await api.request("POST", "/api/v1/jobs", json=body)

    assert status == 413, problem
    assert resp.content_type == "application/problem+json"
    assert _security_headers(resp) == EXPECTED


async def test_an_event_stream_carries_the_security_headers(api: Api) -> None:
    job = await api.submit("system.echo", {})

    async with api.session.get(f"{api.base}/api/v1/jobs/{job['id']}/events", headers=api.auth()) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        headers = _security_headers(resp)

    assert headers == EXPECTED  # `no-store`, not the stream's own `no-cache`


async def test_a_created_api_key_is_never_cached(api: Api) -> None:
    body = {"name": "ci", "sub": "ci-bot", "role": "user"}
    status, created, resp = await api.request("POST", "/api/v1/api-keys", as_="root", role="admin", json=body)

    assert status == 201, created
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


# JWT_MAX_LIFETIME_S (86400 by default): a token valid for longer is refused, whoever signed it.


async def test_a_token_valid_for_longer_than_the_maximum_is_refused(api: Api) -> None:
    now = int(time.time())
    cases = {
        "a year from iat": {"iat": now, "exp": now + 365 * 86400},
        "a year, no iat": {"exp": now + 365 * 86400},
        "old iat, near exp": {"iat": now - 3 * 86400, "exp": now + 600},
        "exactly a day": {"iat": now, "exp": now + 86400},
    }
    outcomes = {}
    for name, claims in cases.items():
        token = jwt.encode({"sub": "alice", **claims}, TEST_JWT_SECRET, algorithm="HS256")
        headers = {"Authorization": f"Bearer {token}"}
        async with api.session.get(f"{api.base}/api/v1/jobs", headers=headers) as resp:
            outcomes[name] = (resp.status, (await resp.json()).get("detail", ""))

    assert outcomes["exactly a day"][0] == 200
    for name in ("a year from iat", "a year, no iat", "old iat, near exp"):
        status, detail = outcomes[name]
        assert status == 401, name
        assert "longer than this gateway accepts (86400 s" in detail, name


# /ready is public: up or down per dependency, never why.


async def test_ready_says_down_without_the_reason(services: Services, pg: Conn, proxy: TcpProxy) -> None:
    settings = gateway_settings(services, jobs_url=proxy.url(services.jobs_db))
    async with running_gateway(settings) as api:
        proxy.cut()
        status, body, _ = await api.request("GET", "/ready", headers={"Authorization": ""})

    assert (status, body) == (503, {"redis": "down", "postgres": "ok"})


# /metrics outside development: its own listener (METRICS_HOST:METRICS_PORT), not the API port.


@pytest.fixture
async def production_gateway(services: Services, pg: Conn, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """`python -m gateway` as the image runs it (ENVIRONMENT=production, real secrets): (API base, metrics base)."""
    api_port, metrics_port = free_port(), free_port()
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith(("API_", "METRICS_", "ENVIRONMENT"))}
    env = {
        **clean, "ENVIRONMENT": "production", "JWT_SECRET": TEST_JWT_SECRET, "ENCRYPTION_KEYS": TEST_ENCRYPTION_KEY,
        "API_HOST": "127.0.0.1", "API_PORT": str(api_port), "METRICS_PORT": str(metrics_port),
        "REDIS_CACHE_URL": services.cache_url, "REDIS_JOBS_URL": services.jobs_url,
        "DATABASE_URL": services.database_url, "STORAGE_DIR": str(tmp_path / "storage"), "LOG_LEVEL": "WARNING",
    }  # fmt: skip
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", env=env, stdout=log, stderr=subprocess.STDOUT
        )
    api_base, metrics_base = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{metrics_port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def up() -> bool | None:
                assert proc.returncode is None, log_path.read_text()
                try:
                    async with session.get(f"{api_base}/health"), session.get(f"{metrics_base}/metrics"):
                        return True
                except aiohttp.ClientConnectionError:
                    return None

            await eventually(up, within=30, interval=0.1)
        yield api_base, metrics_base
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)


async def test_production_serves_metrics_on_their_own_listener_only(production_gateway: tuple[str, str]) -> None:
    api_base, metrics_base = production_gateway
    headers = {"Authorization": f"Bearer {make_token('alice')}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{api_base}/api/v1/jobs", headers=headers) as resp:
            assert resp.status == 200
        async with session.get(f"{metrics_base}/metrics") as resp:
            metrics_status, metrics = resp.status, await resp.text()
        async with session.get(f"{api_base}/metrics") as resp:
            on_api_port = resp.status
        async with session.get(f"{metrics_base}/api/v1/jobs", headers=headers) as resp:
            api_on_metrics_port = resp.status

    assert metrics_status == 200
    assert 'conveyor_gateway_http_requests_total{method="GET",route="/api/v1/jobs",status="200"} 1.0' in metrics
    assert on_api_port == 404
    assert api_on_metrics_port == 404


def test_a_taken_metrics_port_is_one_line_and_exit_code_2(services: Services) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        clean = {k: v for k, v in os.environ.items() if not k.upper().startswith(("API_", "METRICS_", "ENVIRONMENT"))}
        env = {
            **clean, "ENVIRONMENT": "production", "JWT_SECRET": TEST_JWT_SECRET, "ENCRYPTION_KEYS": TEST_ENCRYPTION_KEY,
            "API_PORT": str(free_port()), "METRICS_PORT": str(port),
            "REDIS_CACHE_URL": services.cache_url, "REDIS_JOBS_URL": services.jobs_url,
            "DATABASE_URL": services.database_url, "LOG_LEVEL": "WARNING",
        }  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "gateway"], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    assert done.returncode == 2, done.stderr
    assert f"gateway: cannot serve /metrics on 127.0.0.1:{port}: address already in use" in done.stderr
    assert "(set METRICS_HOST / METRICS_PORT)" in done.stderr
    assert "Traceback" not in done.stderr
