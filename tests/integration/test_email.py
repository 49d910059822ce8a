"""email.send against a real SMTP server (aiosmtpd): delivery, headers, refusals, outages."""

from __future__ import annotations

import inspect
from email import message_from_bytes
from email.message import Message

import pytest
from redis.asyncio import Redis

from shared.core.settings import GatewaySettings, MailPolicyConfig
from shared.ledger import submission
from support.helpers import eventually
from support.stack import (
    Api,
    Conn,
    Services,
    SmtpSink,
    StartWorker,
    free_port,
    gateway_settings,
    running_gateway,
    smtp_server,
)
from workers.processes import WorkerProcess


def _parse(sink: SmtpSink, index: int = 0) -> Message:
    content = sink.messages[index].content
    assert isinstance(content, bytes)
    return message_from_bytes(content)


async def test_mail_arrives_with_the_right_headers(api: Api, start_worker: StartWorker, smtp: SmtpSink) -> None:
    await start_worker("default", smtp_port=smtp.port)
    job = await api.submit(
        "email.send",
        {
            "to": ["ann@example.com"], "cc": ["cid@example.com"], "bcc": ["bea@example.com"],
            "subject": "Your report", "text": "Plain body", "html": "<p>HTML body</p>",
            "reply_to": "support@example.com",
        },
    )  # fmt: skip

    done = await api.wait_status(job["id"], "succeeded")

    assert len(smtp.messages) == 1
    envelope = smtp.messages[0]
    assert sorted(envelope.rcpt_tos) == ["ann@example.com", "bea@example.com", "cid@example.com"]
    msg = _parse(smtp)
    assert msg["To"] == "ann@example.com"
    assert msg["Cc"] == "cid@example.com"
    assert msg["Bcc"] is None, "Bcc recipients must not be visible to the others"
    assert msg["Subject"] == "Your report"
    assert msg["Reply-To"] == "support@example.com"
    assert msg["Message-ID"] == done["result"]["message_id"]
    assert job["id"] in msg["Message-ID"]
    assert msg.is_multipart()
    assert {part.get_content_type() for part in msg.walk()} >= {"text/plain", "text/html"}
    assert sorted(done["result"]["accepted"]) == ["ann@example.com", "bea@example.com", "cid@example.com"]
    assert done["result"]["refused"] == {}


async def test_refused_recipient_fails_without_retry(api: Api, start_worker: StartWorker, smtp: SmtpSink) -> None:
    await start_worker("default", smtp_port=smtp.port)
    job = await api.submit("email.send", {"to": ["reject@example.com"], "subject": "Hi", "text": "x"})

    failed = await api.wait_status(job["id"], "failed")

    assert failed["attempts"] == 1
    assert failed["error"]["type"] == "SMTPRecipientsRefused"
    assert failed["error"]["retryable"] is False
    assert smtp.messages == []


async def test_partly_refused_mail_reaches_the_others(api: Api, start_worker: StartWorker, smtp: SmtpSink) -> None:
    await start_worker("default", smtp_port=smtp.port)
    job = await api.submit(
        "email.send", {"to": ["ok@example.com", "reject-me@example.com"], "subject": "Hi", "text": "x"}
    )

    done = await api.wait_status(job["id"], "succeeded")

    assert done["result"]["accepted"] == ["ok@example.com"]
    assert list(done["result"]["refused"]) == ["reject-me@example.com"]
    assert smtp.messages[0].rcpt_tos == ["ok@example.com"]


async def test_smtp_outage_retries_until_the_server_is_back(api: Api, start_worker: StartWorker) -> None:
    port = free_port()
    await start_worker("default", smtp_port=port)
    job = await api.submit("email.send", {"to": ["ann@example.com"], "subject": "Later", "text": "x"})

    retrying = await api.wait_status(job["id"], "retrying")
    assert retrying["error"]["retryable"] is True

    with smtp_server(port) as sink:
        done = await api.wait_status(job["id"], "succeeded", within=20)
        assert done["attempts"] == 2
        assert len(sink.messages) == 1


# The recipient policy (MAIL_ALLOWED_RECIPIENTS), held at submission and again in the worker.


def _restricted_gateway(services: Services, allowed: str) -> GatewaySettings:
    return gateway_settings(services).model_copy(update={"mail_policy": MailPolicyConfig(allowed_recipients=allowed)})


def _held(worker: WorkerProcess) -> float:
    """How many times the worker put an `email.send` job back to wait (what a user sees: it stays queued)."""
    value = worker.metrics.registry.get_sample_value(
        "conveyor_worker_jobs_total", {"type": "email.send", "outcome": "held"}
    )
    return value or 0.0


_WIRED = "context" in inspect.signature(submission.prepare).parameters


@pytest.mark.skipif(not _WIRED, reason="the gateway does not pass the recipient policy to submission.prepare yet")
async def test_a_user_may_not_mail_outside_the_allowed_recipients_but_an_admin_may(
    services: Services, pg: Conn, jobs_redis: Redis
) -> None:
    mail = {"to": ["ann@example.com", "bob@evil.example"], "bcc": ["ops@other.org", "eve@evil.example"],
            "subject": "Hi", "text": "x"}  # fmt: skip
    async with running_gateway(_restricted_gateway(services, "example.com, ops@other.org")) as gateway:
        status, refused, _ = await gateway.request("POST", "/api/v1/jobs", json={"type": "email.send", "payload": mail})
        admin_status, accepted, _ = await gateway.request(
            "POST", "/api/v1/jobs", as_="root", role="admin", json={"type": "email.send", "payload": mail}
        )
        job = {"type": "email.send", "payload": {**mail, "bcc": []}}
        scheduled, schedule_problem, _ = await gateway.request(
            "POST", "/api/v1/schedules", json={"name": "mailer", "cron": "0 0 1 1 *", "job": job}
        )
        batched, batch_problem, _ = await gateway.request("POST", "/api/v1/batches", json={"jobs": [job]})

    assert status == 422, refused
    assert [(e["loc"], e["type"]) for e in refused["errors"]] == [
        (["payload", "to", 1], "recipient_not_allowed"),
        (["payload", "bcc", 1], "recipient_not_allowed"),
    ]
    assert "bob@evil.example" in refused["errors"][0]["msg"]
    assert admin_status == 202, accepted
    assert scheduled == 422, schedule_problem
    assert [e["loc"] for e in schedule_problem["errors"]] == [["job", "payload", "to", 1]]
    assert batched == 422, batch_problem
    assert [e["loc"] for e in batch_problem["errors"]] == [["jobs", 0, "payload", "to", 1]]


async def test_the_worker_refuses_a_recipient_outside_the_policy_that_got_past_the_gateway(
    api: Api, start_worker: StartWorker, smtp: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job reaches the ledger past the submission check (here a gateway with the open development
    policy): the worker, holding the user policy, does not send it."""
    monkeypatch.setenv("MAIL_ALLOWED_RECIPIENTS", "example.com")
    await start_worker("default", smtp_port=smtp.port)
    mail = {"to": ["ann@example.com"], "cc": ["bob@evil.example"], "subject": "Hi", "text": "x"}
    refused = await api.submit("email.send", mail)
    allowed = await api.submit("email.send", {**mail, "cc": ["Cid@Example.COM"]})

    failed = await api.wait_status(refused["id"], "failed")
    await api.wait_status(allowed["id"], "succeeded")

    assert failed["attempts"] == 1
    assert failed["error"]["type"] == "RecipientNotAllowed"
    assert failed["error"]["retryable"] is False
    assert "bob@evil.example" in failed["error"]["message"]
    assert [m.rcpt_tos for m in smtp.messages] == [["ann@example.com", "Cid@example.com"]]


async def test_a_scheduled_mail_is_held_to_the_policy_when_it_fires(
    api: Api, start_worker: StartWorker, smtp: SmtpSink, pg: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAIL_ALLOWED_RECIPIENTS", "example.com")
    mail = {"to": ["bob@evil.example"], "subject": "Hi", "text": "x"}
    status, schedule, _ = await api.request(
        "POST", "/api/v1/schedules",
        json={"name": "mailer", "cron": "0 0 1 1 *", "job": {"type": "email.send", "payload": mail}},
    )  # fmt: skip
    assert status == 201, schedule
    await start_worker("default", smtp_port=smtp.port)
    await start_worker("scheduler")
    await pg.execute("UPDATE schedules SET next_run_at = now() - interval '1 second'")

    async def fired() -> str | None:
        _, current, _ = await api.request("GET", f"/api/v1/schedules/{schedule['id']}")
        job_id: str | None = current["last_job_id"]
        return job_id

    failed = await api.wait_status(await eventually(fired), "failed")

    assert failed["error"]["type"] == "RecipientNotAllowed"
    assert smtp.messages == []


async def test_an_owner_with_a_live_admin_api_key_mails_anyone(
    api: Api, start_worker: StartWorker, smtp: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAIL_ALLOWED_RECIPIENTS", "example.com")
    await start_worker("default", smtp_port=smtp.port)
    status, key, _ = await api.request(
        "POST", "/api/v1/api-keys", as_="root", role="admin", json={"name": "mailer", "sub": "mailer", "role": "admin"}
    )
    assert status == 201, key
    mail = {"to": ["bob@evil.example"], "subject": "Hi", "text": "x"}
    headers = {"Authorization": f"Bearer {key['token']}"}

    status, job, _ = await api.request(
        "POST", "/api/v1/jobs", json={"type": "email.send", "payload": mail}, headers=headers
    )
    assert status == 202, job
    done = await api.wait_status(job["id"], "succeeded", as_="mailer")
    revoked, _, _ = await api.request("DELETE", f"/api/v1/api-keys/{key['id']}", as_="root", role="admin")
    assert revoked in {200, 204}
    # The same owner, now without its key, submitting through a (development) gateway that lets it by.
    later = await api.submit("email.send", mail, as_="mailer")
    failed = await api.wait_status(later["id"], "failed", as_="mailer")

    assert done["result"]["accepted"] == ["bob@evil.example"]
    assert failed["error"]["type"] == "RecipientNotAllowed"
    assert len(smtp.messages) == 1


async def test_a_users_reply_to_is_held_to_the_recipient_policy_at_submission(services: Services) -> None:
    """Replies to a mail from MAIL_FROM go to its Reply-To: a free one would make an allowed mail phishing."""
    mail = {"to": ["ann@example.com"], "subject": "Hi", "text": "x", "reply_to": "billing@evil.example"}
    async with running_gateway(_restricted_gateway(services, "example.com")) as gateway:
        status, refused, _ = await gateway.request("POST", "/api/v1/jobs", json={"type": "email.send", "payload": mail})
        allowed, accepted, _ = await gateway.request(
            "POST", "/api/v1/jobs",
            json={"type": "email.send", "payload": {**mail, "reply_to": "Support@Example.com"}},
        )  # fmt: skip
        admin_status, by_admin, _ = await gateway.request(
            "POST", "/api/v1/jobs", as_="root", role="admin", json={"type": "email.send", "payload": mail}
        )

    assert status == 422, refused
    assert [(e["loc"], e["type"]) for e in refused["errors"]] == [(["payload", "reply_to"], "recipient_not_allowed")]
    assert "billing@evil.example" in refused["errors"][0]["msg"]
    assert allowed == 202, accepted
    assert admin_status == 202, by_admin


async def test_the_worker_refuses_a_reply_to_outside_the_policy(
    api: Api, start_worker: StartWorker, smtp: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAIL_ALLOWED_RECIPIENTS", "example.com")
    await start_worker("default", smtp_port=smtp.port)
    mail = {"to": ["ann@example.com"], "subject": "Hi", "text": "x", "reply_to": "billing@evil.example"}
    refused = await api.submit("email.send", mail)
    allowed = await api.submit("email.send", {**mail, "reply_to": "support@example.com"})

    failed = await api.wait_status(refused["id"], "failed")
    await api.wait_status(allowed["id"], "succeeded")

    assert failed["attempts"] == 1
    assert failed["error"]["type"] == "RecipientNotAllowed"
    assert "billing@evil.example" in failed["error"]["message"]
    assert [_parse(smtp, i)["Reply-To"] for i in range(len(smtp.messages))] == ["support@example.com"]


# The per-owner budget (MAIL_PER_OWNER_PER_HOUR), in recipients.


async def test_past_the_hourly_budget_a_mail_waits_unsent_and_unfailed(
    api: Api, start_worker: StartWorker, smtp: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAIL_PER_OWNER_PER_HOUR", "3")
    worker = await start_worker("default", smtp_port=smtp.port)
    first = await api.submit("email.send", {"to": ["a@example.com", "b@example.com"], "subject": "1", "text": "x"})
    await api.wait_status(first["id"], "succeeded")
    second = await api.submit(
        "email.send", {"to": ["c@example.com"], "cc": ["d@example.com"], "subject": "2", "text": "x"}
    )

    async def held() -> bool | None:
        return True if _held(worker) >= 1 else None

    await eventually(held)
    others = await api.submit("email.send", {"to": ["e@example.com"], "subject": "bob's", "text": "x"}, as_="bob")
    await api.wait_status(others["id"], "succeeded", as_="bob")
    waiting = await api.job(second["id"])
    third = await api.submit("email.send", {"to": ["f@example.com"], "subject": "3", "text": "x"})
    await api.wait_status(third["id"], "succeeded")

    assert waiting["status"] == "queued"
    assert waiting["attempts"] == 0, "waiting for the budget uses no attempt"
    assert waiting["error"] is None
    assert sorted(str(m.rcpt_tos) for m in smtp.messages) == sorted(
        str(r) for r in (["a@example.com", "b@example.com"], ["e@example.com"], ["f@example.com"])
    ), "the second mail (two more recipients) is not sent; the third (one) still fits; bob's is his own"


async def test_a_mail_to_more_recipients_than_an_hour_allows_fails(
    api: Api, start_worker: StartWorker, smtp: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAIL_PER_OWNER_PER_HOUR", "2")
    await start_worker("default", smtp_port=smtp.port)
    job = await api.submit(
        "email.send", {"to": ["a@example.com", "b@example.com", "c@example.com"], "subject": "x", "text": "x"}
    )

    failed = await api.wait_status(job["id"], "failed")

    assert failed["error"]["type"] == "TooManyRecipients"
    assert smtp.messages == []


# Subjects: one line, as `str.splitlines()` reads one.


@pytest.mark.parametrize("brk", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r\n"])
async def test_a_subject_with_any_line_break_is_422(api: Api, brk: str) -> None:
    body = {"type": "email.send", "payload": {"to": ["a@example.com"], "subject": f"Hi{brk}there", "text": "x"}}

    status, problem, _ = await api.request("POST", "/api/v1/jobs", json=body)

    assert status == 422, problem
    assert ["payload", "subject"] in [e["loc"] for e in problem["errors"]]
