"""email.send against a real SMTP server (aiosmtpd): delivery, headers, refusals, outages."""

from __future__ import annotations

from email import message_from_bytes
from email.message import Message

from support.stack import Api, SmtpSink, StartWorker, free_port, smtp_server


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
