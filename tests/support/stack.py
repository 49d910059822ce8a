"""The test stack: service URLs, settings builders, the gateway over real HTTP, an aiosmtpd sink."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from pydantic import SecretStr

from devstack.embedded.process import free_port as free_port  # the one helper; tests import it from here
from gateway.app import create_app
from shared.core import json
from shared.core.settings import (
    AuthConfig,
    CryptoConfig,
    GatewayConfig,
    GatewaySettings,
    JobStoreConfig,
    LogConfig,
    PostgresConfig,
    RedisConfig,
    SecurityConfig,
    SmtpConfig,
    StorageConfig,
    WebhookConfig,
    WorkerConfig,
    WorkerSettings,
)
from shared.jobtypes.spec import Registry
from support.helpers import TEST_JWT_SECRET, eventually, make_token
from workers.processes import WorkerProcess

if TYPE_CHECKING:
    Conn = asyncpg.Connection[asyncpg.Record]
else:
    Conn = asyncpg.Connection

StartWorker = Callable[..., Awaitable[WorkerProcess]]

# The test stack is a development environment, as `make run` is (an unset ENVIRONMENT means production):
# the gateways, workers and subprocesses it starts offer `system.echo`, let users mail anyone and serve
# /metrics on the API port. Set once, on import (before any test runs); a caller's ENVIRONMENT, in any case,
# is replaced so the suite tests what it says. A test of another or no ENVIRONMENT says so itself.
for _name in [name for name in os.environ if name.upper() == "ENVIRONMENT"]:
    del os.environ[_name]
os.environ["ENVIRONMENT"] = "development"


@dataclass(frozen=True)
class Services:
    """The servers of one test session: its own Redis database pair and its own PostgreSQL database."""

    redis_base: str
    database_url: str
    cache_db: int = 14
    jobs_db: int = 15
    storage_dir: str = "var/test-storage"

    @property
    def cache_url(self) -> str:
        return f"{self.redis_base}/{self.cache_db}"

    @property
    def jobs_url(self) -> str:
        return f"{self.redis_base}/{self.jobs_db}"

    @property
    def postgres_address(self) -> tuple[str, int]:
        host_port = self.database_url.split("@", 1)[-1].split("/", 1)[0]
        host, _, port = host_port.partition(":")
        return host or "127.0.0.1", int(port or 5432)

    def through_postgres_port(self, port: int) -> Services:
        """The same services, with PostgreSQL reached through another local port (a proxy)."""
        host, old = self.postgres_address
        url = self.database_url.replace(f"{host}:{old}", f"127.0.0.1:{port}", 1)
        return dataclasses.replace(self, database_url=url)


def redis_config(services: Services, *, jobs_url: str | None = None) -> RedisConfig:
    return RedisConfig(cache_url=services.cache_url, jobs_url=jobs_url or services.jobs_url, connect_timeout_s=0.5)


def postgres_config(services: Services) -> PostgresConfig:
    return PostgresConfig(url=SecretStr(services.database_url), pool_min=1, pool_max=5)


# A fixed test key (Fernet: 32 url-safe base64 bytes), so gateway and workers of one test agree.
TEST_ENCRYPTION_KEY = "q3J0fQ0xr3yqgH5wN0pW9o7b1c2d3e4f5g6h7i8j9k0="


def storage_config(services: Services, **options: Any) -> StorageConfig:
    return StorageConfig(dir=services.storage_dir, **options)


def gateway_settings(
    services: Services,
    *,
    jobs_url: str | None = None,
    security: SecurityConfig | None = None,
    storage: StorageConfig | None = None,
    auth: AuthConfig | None = None,
    **gateway: Any,
) -> GatewaySettings:
    """Settings for a test gateway; `**gateway` goes to GatewayConfig, the named sections replace defaults."""
    return GatewaySettings(
        gateway=GatewayConfig(host="127.0.0.1", port=0, **gateway),
        redis=redis_config(services, jobs_url=jobs_url),
        postgres=postgres_config(services),
        auth=auth or AuthConfig(jwt_secret=SecretStr(TEST_JWT_SECRET)),
        security=security or SecurityConfig(),
        crypto=CryptoConfig(keys=SecretStr(TEST_ENCRYPTION_KEY)),
        storage=storage or storage_config(services),
        jobs=JobStoreConfig(),
        log=LogConfig(format="json"),
    )


def worker_settings(
    services: Services,
    *,
    smtp_port: int = 1,
    jobs_url: str | None = None,
    webhook: WebhookConfig | None = None,
    storage: StorageConfig | None = None,
    smtp: SmtpConfig | None = None,
    **worker: Any,
) -> WorkerSettings:
    """Settings for a test worker; `**worker` goes to WorkerConfig, the named sections replace defaults."""
    options: dict[str, Any] = {
        "metrics_port": 0, "poll_delay_s": 0.01, "shutdown_grace_s": 2,
        "reconcile_interval_s": 0.2, "reconcile_grace_s": 0.5, **worker,
    }  # fmt: skip
    return WorkerSettings(
        worker=WorkerConfig(**options),
        redis=redis_config(services, jobs_url=jobs_url),
        postgres=postgres_config(services),
        smtp=smtp or SmtpConfig(host="127.0.0.1", port=smtp_port, timeout_s=2),
        webhook=webhook or WebhookConfig(allow_private=True, timeout_s=2),
        crypto=CryptoConfig(keys=SecretStr(TEST_ENCRYPTION_KEY)),
        storage=storage or storage_config(services),
        jobs=JobStoreConfig(),
        log=LogConfig(),
    )


@dataclass
class Api:
    """The gateway running on a real port, and a client that speaks to it."""

    base: str
    session: aiohttp.ClientSession
    app: web.Application

    def auth(self, sub: str = "alice", role: str = "user") -> dict[str, str]:
        return {"Authorization": f"Bearer {make_token(sub, role=role)}"}

    async def request(
        self, method: str, path: str, *, as_: str = "alice", role: str = "user", **kw: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {**self.auth(as_, role), **kw.pop("headers", {})}
        async with self.session.request(method, self.base + path, headers=headers, **kw) as resp:
            raw = await resp.read()
            body = json.loads(raw) if raw and "json" in resp.content_type else raw.decode()
            return resp.status, body, resp

    async def submit(self, type_: str, payload: dict[str, Any], *, as_: str = "alice", **extra: Any) -> dict[str, Any]:
        body = {"type": type_, "payload": payload, **extra}
        status, job, _ = await self.request("POST", "/api/v1/jobs", as_=as_, json=body)
        assert status == 202, job
        assert isinstance(job, dict)
        return job

    async def job(self, job_id: str, *, as_: str = "alice") -> dict[str, Any]:
        status, body, _ = await self.request("GET", f"/api/v1/jobs/{job_id}", as_=as_)
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    async def wait_status(
        self, job_id: str, *statuses: str, within: float = 15.0, as_: str = "alice"
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            job = await self.job(job_id, as_=as_)
            return job if job["status"] in statuses else None

        return await eventually(check, within=within)


@contextlib.asynccontextmanager
async def running_gateway(settings: GatewaySettings, *, registry: Registry | None = None) -> AsyncIterator[Api]:
    app = create_app(settings, registry=registry)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(base=f"http://127.0.0.1:{port}", session=session, app=app)
    finally:
        await runner.cleanup()


@dataclass
class SmtpSink:
    """Keeps every message; refuses recipients whose address contains `reject`."""

    messages: list[Envelope] = field(default_factory=list)
    port: int = 0

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if "reject" in address:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(envelope)
        return "250 Message accepted for delivery"


@contextlib.contextmanager
def smtp_server(port: int = 0, **options: Any) -> Iterator[SmtpSink]:
    """An aiosmtpd server on a real port (in its own thread, as aiosmtpd's Controller runs); `options` go to
    its SMTP server (e.g. an `authenticator`)."""
    sink = SmtpSink()
    controller = Controller(sink, hostname="127.0.0.1", port=port or free_port(), **options)
    controller.start()
    sink.port = controller.port
    try:
        yield sink
    finally:
        controller.stop()
