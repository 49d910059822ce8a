"""A deployment that never sets ENVIRONMENT is a production one: the gateway offers no `system.echo` and lets
a user mail nobody, and a worker runs no `system.echo` and sends no plain-http link (as an operator of a pip
or systemd install with real secrets sees it; the development relaxations need ENVIRONMENT=development)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from support.stack import (
    Api,
    Conn,
    Services,
    SmtpSink,
    StartWorker,
    gateway_settings,
    running_gateway,
    storage_config,
)

RELAXATION_VARS = ("ENVIRONMENT", "SYSTEM_ECHO_ENABLED", "MAIL_ALLOWED_RECIPIENTS", "MAIL_LINK_HOSTS")


def _unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in RELAXATION_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


async def test_a_gateway_without_environment_offers_no_echo_and_a_user_mails_nobody(
    services: Services, pg: Conn, jobs_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    _unset(monkeypatch)
    mail = {"type": "email.send", "payload": {"to": ["ann@example.com"], "subject": "Hi", "text": "x"}}
    # metrics_port=0: a listener of its own on any free port (its default, 9100, may be taken on this machine)
    async with running_gateway(gateway_settings(services, metrics_port=0)) as api:
        echo, refused_echo, _ = await api.request("POST", "/api/v1/jobs", json={"type": "system.echo", "payload": {}})
        _, types, _ = await api.request("GET", "/api/v1/job-types")
        mailed, refused_mail, _ = await api.request("POST", "/api/v1/jobs", json=mail)
        admin_mailed, _, _ = await api.request("POST", "/api/v1/jobs", as_="root", role="admin", json=mail)

    assert echo == 422, refused_echo
    assert refused_echo["errors"][0]["type"] == "unknown_type"
    assert "system.echo" not in {t["type"] for t in types["items"]}
    assert mailed == 422, refused_mail
    assert [(e["loc"], e["type"]) for e in refused_mail["errors"]] == [(["payload", "to", 0], "recipient_not_allowed")]
    assert admin_mailed == 202, "admins are unrestricted"


async def test_a_worker_without_environment_runs_no_echo_and_sends_no_plain_http_link(
    api: Api, start_worker: StartWorker, smtp: SmtpSink, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The jobs come through a development gateway (as after a change of settings); the worker decides."""
    echo = await api.submit("system.echo", {"data": 1}, max_attempts=5)
    link = await api.submit(
        "email.send",
        {"to": ["ann@example.com"], "subject": "Welcome", "template": "welcome",
         "context": {"name": "Ann", "url": "http://jobs.example.com/login"}},
    )  # fmt: skip
    _unset(monkeypatch)
    monkeypatch.setenv("MAIL_ALLOWED_RECIPIENTS", "example.com")  # so only the link decides

    await start_worker(
        "default", smtp_port=smtp.port, storage=storage_config(services, public_url="https://jobs.example.com")
    )

    echoed = await api.wait_status(echo["id"], "failed")
    mailed = await api.wait_status(link["id"], "failed")
    assert (echoed["attempts"], echoed["error"]["type"]) == (1, "JobTypeDisabled")
    assert (mailed["attempts"], mailed["error"]["type"]) == (1, "LinkNotAllowed")
    assert "plain http" in mailed["error"]["message"]
    assert smtp.messages == []
