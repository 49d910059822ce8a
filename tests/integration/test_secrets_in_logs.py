"""No secret reaches a log line: JWT secret and tokens, SMTP password, webhook secret and secret payload headers.

Every record of a run that exercises each secret is formatted the way production formats it (JSON and
console), at DEBUG, and searched for each secret in every form it travels in (plain, base64 as SMTP AUTH
sends it).
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pydantic import SecretStr

from shared.core.logging import ConsoleFormatter, ContextFilter, JsonFormatter, configure_logging
from shared.core.settings import AuthConfig, LogConfig, SmtpConfig, WebhookConfig
from support.helpers import eventually, make_token
from support.stack import Api, Services, StartWorker, gateway_settings, running_gateway, smtp_server

JWT_SECRET = "jwt-secret-7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c2e"
OTHER_SECRET = "forged-secret-0e1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b"
SMTP_USER = "conveyor-mailer"
SMTP_PASSWORD = "smtp-pass-Qx81vLz0Wm3n"
WEBHOOK_SECRET = "whsec-Rb52kT9pYc7Hd1Lm"
HEADER_SECRET = "hdr-api-key-Jn4Vs8Wq2Xe6"
GARBAGE_TOKEN = "garbage-token-Zu7Kd3Pf9Ya1"

# The test's own SMTP server logs every command it receives (AUTH included): it stands for a third party.
THIRD_PARTY_LOGGERS = ("mail.log",)


class Captured(logging.Handler):
    """Every record, formatted as JSON and as console text with the production filter."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.addFilter(ContextFilter("test"))
        self._formatters = (JsonFormatter(), ConsoleFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(THIRD_PARTY_LOGGERS):
            return
        self.lines.extend(f.format(record) for f in self._formatters)


@pytest.fixture
def logs() -> Iterator[Captured]:
    """The production logging set-up at DEBUG, with every line kept instead of written to stderr."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    names = ("aiohttp.access", "arq.worker")
    saved_levels = {name: logging.getLogger(name).level for name in names}
    configure_logging(LogConfig(level="DEBUG", format="json"), role="test")
    captured = Captured()
    root.handlers[:] = [captured, *saved_handlers]
    try:
        yield captured
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


def authenticator(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    """Accepts AUTH with the test credentials only (plain text: the server is local)."""
    ok = isinstance(data, LoginPassword) and data == (SMTP_USER.encode(), SMTP_PASSWORD.encode())
    return AuthResult(success=ok)


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A local webhook subscriber that records the headers of each delivery."""
    seen: list[dict[str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        await request.read()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", seen
    finally:
        await runner.cleanup()


def _forms(secret: str) -> list[str]:
    """A secret as it may travel: plain, and base64 as SMTP AUTH LOGIN/PLAIN encodes it."""
    plain = base64.b64encode(f"\0{SMTP_USER}\0{secret}".encode()).decode()
    return [secret, base64.b64encode(secret.encode()).decode(), plain]


async def _gateway_traffic(api: Api, valid: str, bad_tokens: list[str]) -> dict[str, str]:
    """Requests carrying forged, expired and malformed credentials, then good ones; returns the good headers."""
    for header in [f"Bearer {t}" for t in bad_tokens] + [f"Basic {GARBAGE_TOKEN}"]:
        status, _, _ = await api.request("GET", "/api/v1/jobs", headers={"Authorization": header})
        assert status == 401
    good = {"Authorization": f"Bearer {valid}"}
    status, _, _ = await api.request("GET", "/api/v1/jobs", headers=good)
    assert status == 200
    status, _, _ = await api.request("GET", "/api/v1/jobs/no-such-job", headers=good)
    assert status == 404
    return good


async def test_no_secret_is_ever_logged(services: Services, start_worker: StartWorker, logs: Captured) -> None:
    auth = AuthConfig(jwt_secret=SecretStr(JWT_SECRET))
    valid = make_token("alice", secret=JWT_SECRET)
    bad_tokens = [
        make_token("mallory", secret=OTHER_SECRET),
        make_token("alice", secret=JWT_SECRET, ttl_s=-3600),
        GARBAGE_TOKEN,
    ]
    with smtp_server(authenticator=authenticator, auth_require_tls=False) as smtp:
        async with receiver() as (url, deliveries), running_gateway(gateway_settings(services, auth=auth)) as api:
            await start_worker(
                "default",
                smtp=SmtpConfig(
                    host="127.0.0.1", port=smtp.port, username=SMTP_USER, password=SecretStr(SMTP_PASSWORD), timeout_s=2
                ),
                webhook=WebhookConfig(secret=SecretStr(WEBHOOK_SECRET), allow_private=True, timeout_s=2),
            )
            good = await _gateway_traffic(api, valid, bad_tokens)

            async def submit(body: dict[str, Any]) -> str:
                status, job, _ = await api.request("POST", "/api/v1/jobs", headers=good, json=body)
                assert status == 202, job
                return str(job["id"])

            sent = await submit(
                {"type": "email.send", "payload": {"to": ["bob@example.com"], "subject": "Hi", "text": "Hello"}}
            )
            refused = await submit(
                {"type": "email.send", "payload": {"to": ["reject-me@example.com"], "subject": "No", "text": "x"}}
            )
            hook = await submit(
                {
                    "type": "webhook.deliver",
                    "payload": {
                        "url": url,
                        "event": "order.paid",
                        "data": {"n": 1},
                        "headers": {"X-Api-Key": HEADER_SECRET},
                    },
                    "max_attempts": 1,
                }
            )
            failing = await submit(
                {"type": "system.echo", "payload": {"data": "payload-marker", "fail_times": 5}, "max_attempts": 1}
            )

            async def finished(job_id: str) -> dict[str, Any]:
                async def check() -> dict[str, Any] | None:
                    _, job, _ = await api.request("GET", f"/api/v1/jobs/{job_id}", headers=good)
                    return job if job["status"] in ("succeeded", "failed") else None

                return await eventually(check, within=20)

            mail, bounced, delivered, failed = [await finished(i) for i in (sent, refused, hook, failing)]

    # The run did what it should, so the secrets really travelled.
    assert mail["status"] == "succeeded", mail["error"]
    assert len(smtp.messages) == 1
    assert bounced["status"] == "failed"
    assert "reject-me@example.com" in str(bounced["error"])
    assert failed["error"] is not None
    if delivered["status"] == "succeeded":
        assert deliveries[0]["X-Api-Key"] == HEADER_SECRET
        assert deliveries[0]["Conveyor-Signature"].startswith("t=")

    text = "\n".join(logs.lines)
    assert "http.request" in text  # the capture saw the gateway
    assert "job.failed" in text  # and the worker
    secrets = [JWT_SECRET, OTHER_SECRET, SMTP_PASSWORD, WEBHOOK_SECRET, HEADER_SECRET, valid, *bad_tokens]
    leaked = [(secret, form) for secret in secrets for form in _forms(secret) if form in text]
    assert leaked == []
    assert "Bearer " not in text
