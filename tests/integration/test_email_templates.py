"""email.send with templates (rendering, overrides, problems), the links a mail may carry, and exactly-once
sending, against a real SMTP server (aiosmtpd); test_email_attachments.py has the attachments."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from shared.core.errors import RetryableJobError
from shared.core.settings import SmtpConfig
from shared.jobtypes.email import EMAIL_SEND, EmailPayload, EmailResult
from support.mail import body_of, parsed
from support.stack import Api, Services, SmtpSink, StartWorker, free_port, storage_config
from support.tcp_proxy import TcpProxy
from workers.context import JobContext
from workers.families import builtin_handlers
from workers.families.email.handler import handle_send
from workers.runtime import bind


async def test_template_renders_text_and_html_escaping_only_html(
    api: Api, start_worker: StartWorker, smtp: SmtpSink
) -> None:
    await start_worker("default", smtp_port=smtp.port)
    name = "<script>alert(1)</script>"
    job = await api.submit(
        "email.send",
        {"to": ["ann@example.com"], "subject": "Welcome, {{ name }}!", "template": "welcome",
         "context": {"name": name, "url": "https://example.com/login?a=1&b=2"}},
    )  # fmt: skip

    await api.wait_status(job["id"], "succeeded")

    msg = parsed(smtp)
    assert msg["Subject"] == f"Welcome, {name}!", "the subject is plain text, not escaped"
    text, html = body_of(msg, "plain"), body_of(msg, "html")
    assert f"Hello {name}," in text
    assert "https://example.com/login?a=1&b=2" in text
    assert "<script>" not in html
    assert "Hello &lt;script&gt;alert(1)&lt;/script&gt;," in html
    assert 'href="https://example.com/login?a=1&amp;b=2"' in html


async def test_user_templates_override_and_extend_the_builtins(
    api: Api, start_worker: StartWorker, smtp: SmtpSink, tmp_path: Path
) -> None:
    (tmp_path / "welcome.txt").write_text("Hi {{ name }}, from our own template.\n")
    (tmp_path / "welcome.html").write_text("<p>Hi {{ name }}</p>\n")
    (tmp_path / "invoice.txt").write_text("Invoice {{ number }} is due.\n")
    config = SmtpConfig(host="127.0.0.1", port=smtp.port, timeout_s=2, templates_dir=tmp_path)
    await start_worker("default", smtp=config)
    welcome = await api.submit(
        "email.send", {"to": ["a@example.com"], "subject": "Hi", "template": "welcome", "context": {"name": "Ann"}}
    )
    await api.wait_status(welcome["id"], "succeeded")
    invoice = await api.submit(
        "email.send",
        {"to": ["a@example.com"], "subject": "Invoice {{ number }}", "template": "invoice", "context": {"number": 7}},
    )
    await api.wait_status(invoice["id"], "succeeded")

    first, second = parsed(smtp, 0), parsed(smtp, 1)
    assert body_of(first, "plain") == "Hi Ann, from our own template.\n"
    assert body_of(first, "html") == "<p>Hi Ann</p>\n"
    assert second["Subject"] == "Invoice 7"
    assert body_of(second, "plain") == "Invoice 7 is due.\n"
    assert not second.is_multipart(), "a text-only template sends a text-only mail"


@pytest.mark.parametrize(
    ("template", "context", "error_type"),
    [
        ("no-such-template", {}, "TemplateNotFound"),
        ("welcome", {"product": "Acme"}, "TemplateError"),  # `name` is missing
    ],
)
async def test_template_problems_fail_without_retry(
    api: Api, start_worker: StartWorker, smtp: SmtpSink, template: str, context: dict[str, str], error_type: str
) -> None:
    await start_worker("default", smtp_port=smtp.port)
    payload = {"to": ["a@example.com"], "subject": "Hi", "template": template}
    job = await api.submit("email.send", {**payload, "context": context} if context else payload)

    failed = await api.wait_status(job["id"], "failed")

    assert failed["attempts"] == 1
    assert failed["error"]["type"] == error_type
    assert failed["error"]["retryable"] is False
    assert smtp.messages == []


async def test_undefined_variable_in_the_subject_fails(api: Api, start_worker: StartWorker, smtp: SmtpSink) -> None:
    await start_worker("default", smtp_port=smtp.port)
    job = await api.submit(
        "email.send",
        {"to": ["a@example.com"], "subject": "Hi {{ nobody }}", "template": "welcome", "context": {"name": "A"}},
    )

    failed = await api.wait_status(job["id"], "failed")

    assert failed["error"]["type"] == "TemplateError"
    assert "nobody" in failed["error"]["message"]
    assert smtp.messages == []


async def test_the_subject_is_not_a_template_so_a_loop_in_it_is_sent_as_text(
    api: Api, start_worker: StartWorker, smtp: SmtpSink
) -> None:
    await start_worker("default", smtp_port=smtp.port)
    subject = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %} for {{ name }}"
    job = await api.submit(
        "email.send", {"to": ["a@example.com"], "subject": subject, "template": "welcome", "context": {"name": "Ann"}}
    )

    done = await api.wait_status(job["id"], "succeeded", "failed")

    assert done["status"] == "succeeded", done["error"]
    assert str(parsed(smtp)["Subject"]).endswith("{% endfor %}{% endfor %} for Ann")


# Links: only to PUBLIC_URL's host or a MAIL_LINK_HOSTS one, whoever wrote them.


@pytest.mark.parametrize(
    "payload",
    [
        {"template": "welcome", "context": {"name": "Ann", "url": "https://evil.example/login"}},
        {"template": "welcome", "context": {"name": "Ann", "url": "https://jobs.example.com@evil.example/login"}},
        {"html": '<p>Your account is locked. <a href="https://evil.example/unlock">Unlock it</a></p>'},
        {"text": "Your account is locked. Unlock it at https://evil.example/unlock"},
    ],
    ids=["template-variable", "user-info", "html", "text"],
)
async def test_a_mail_linking_elsewhere_than_the_public_host_fails_unsent(
    api: Api, start_worker: StartWorker, smtp: SmtpSink, services: Services, payload: dict[str, object]
) -> None:
    await start_worker(
        "default", smtp_port=smtp.port, storage=storage_config(services, public_url="https://jobs.example.com")
    )
    job = await api.submit("email.send", {"to": ["a@example.com"], "subject": "Action needed", **payload})

    failed = await api.wait_status(job["id"], "failed")

    assert failed["attempts"] == 1
    assert failed["error"]["type"] == "LinkNotAllowed"
    assert failed["error"]["retryable"] is False
    assert "evil.example" in failed["error"]["message"]
    assert smtp.messages == []


@pytest.mark.parametrize(
    "payload",
    [
        {"subject": "Your account is locked: unlock it at https://evil.example/unlock", "text": "See the subject."},
        {"subject": "Welcome, {{ name }} ({{ ticket }})", "template": "welcome",
         "context": {"name": "Ann", "ticket": "sign in at www.evil.example", "url": "https://jobs.example.com/login"}},
    ],
    ids=["subject", "rendered-subject"],
)  # fmt: skip
async def test_a_subject_linking_elsewhere_than_the_public_host_fails_unsent(
    api: Api, start_worker: StartWorker, smtp: SmtpSink, services: Services, payload: dict[str, object]
) -> None:
    await start_worker(
        "default", smtp_port=smtp.port, storage=storage_config(services, public_url="https://jobs.example.com")
    )
    job = await api.submit("email.send", {"to": ["a@example.com"], **payload})

    failed = await api.wait_status(job["id"], "failed")

    assert failed["attempts"] == 1
    assert failed["error"]["type"] == "LinkNotAllowed"
    assert "evil.example" in failed["error"]["message"]
    assert smtp.messages == []


async def test_links_to_the_public_host_and_the_listed_hosts_are_sent(
    api: Api, start_worker: StartWorker, smtp: SmtpSink, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAIL_LINK_HOSTS", "status.example.org, cdn.example.net")
    storage = storage_config(services, public_url="https://jobs.example.com")
    await start_worker("default", smtp_port=smtp.port, storage=storage)
    welcome = await api.submit(
        "email.send",
        {"to": ["a@example.com"], "subject": "Hi", "template": "welcome",
         "context": {"name": "Ann", "url": "https://jobs.example.com/login"}},
    )  # fmt: skip
    html = (
        '<p><img src="https://cdn.example.net/logo.png" alt="logo"> See <a href="https://status.example.org/">status</a>'
        ' or <a href="#details">below</a>, or write to <a href="mailto:help@jobs.example.com">us</a>.</p>'
    )
    free = await api.submit("email.send", {"to": ["a@example.com"], "subject": "News", "html": html})

    await api.wait_status(welcome["id"], "succeeded")
    await api.wait_status(free["id"], "succeeded")

    assert len(smtp.messages) == 2
    bodies = [body_of(parsed(smtp, i), "html") for i in range(2)]  # in either order: two jobs ran at once
    assert any('href="https://jobs.example.com/login"' in body for body in bodies)
    assert any('href="https://status.example.org/"' in body for body in bodies)


async def test_a_line_break_from_the_context_in_a_subject_fails_at_once(
    api: Api, start_worker: StartWorker, smtp: SmtpSink
) -> None:
    await start_worker("default", smtp_port=smtp.port)
    job = await api.submit(
        "email.send",
        {"to": ["a@example.com"], "subject": "Welcome, {{ name }}", "template": "welcome",
         "context": {"name": "Ann\u2028Bcc: eve@evil.example"}},
    )  # fmt: skip

    failed = await api.wait_status(job["id"], "failed")

    assert failed["attempts"] == 1, "no retry can fix it"
    assert failed["error"]["type"] == "TemplateError"
    assert smtp.messages == []


async def test_a_retry_after_an_accepted_send_does_not_send_again(
    api: Api, start_worker: StartWorker, smtp: SmtpSink
) -> None:
    """The first attempt fails after the server accepted the mail (as a lost outcome write would): the
    retry returns the recorded result, and the recipient gets one message."""

    async def fails_after_sending(job: JobContext, payload: EmailPayload) -> EmailResult:
        result = await handle_send(job, payload)
        if job.attempt == 1:
            raise RetryableJobError("lost after the send", defer_s=0.1, type_name="LostAfterSend")
        return result

    handlers = {**builtin_handlers(), EMAIL_SEND.name: bind(EMAIL_SEND, fails_after_sending)}
    await start_worker("default", smtp_port=smtp.port, handlers=handlers)
    job = await api.submit(
        "email.send", {"to": ["a@example.com", "reject@example.com"], "subject": "Once", "text": "x"}
    )

    done = await api.wait_status(job["id"], "succeeded")

    assert done["attempts"] == 2
    assert [e["type"] for e in done["errors"]] == ["LostAfterSend"]
    assert len(smtp.messages) == 1
    assert done["result"]["message_id"] == parsed(smtp)["Message-ID"]
    assert done["result"]["accepted"] == ["a@example.com"]
    assert list(done["result"]["refused"]) == ["reject@example.com"]


class _CuttingSink(SmtpSink):
    """Accepts the message and, at that moment, cuts PostgreSQL for a second (in the test's event loop)."""

    def __init__(self, proxy: TcpProxy, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._proxy, self._loop = proxy, loop

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not self.messages:
            self._loop.call_soon_threadsafe(self._proxy.cut)
            self._loop.call_soon_threadsafe(self._loop.call_later, 1.0, self._proxy.restore)
        return await super().handle_DATA(server, session, envelope)


async def test_a_ledger_blip_right_after_the_send_still_sends_once(
    services: Services, api: Api, start_worker: StartWorker, pg_proxy: TcpProxy
) -> None:
    sink = _CuttingSink(pg_proxy, asyncio.get_running_loop())
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        await start_worker("default", via=services.through_postgres_port(pg_proxy.port), smtp_port=controller.port)
        job = await api.submit("email.send", {"to": ["a@example.com"], "subject": "Once", "text": "x"})

        done = await api.wait_status(job["id"], "succeeded", within=30)
    finally:
        controller.stop()

    assert len(sink.messages) == 1
    assert done["attempts"] == 1, "the send and the outcome are recorded once the ledger is back"
    assert done["result"]["accepted"] == ["a@example.com"]
