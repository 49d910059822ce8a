"""email.send with attachments: an artifact attached under its name or a new one, only the owner's own, and
never a file that opens as a web page unless its owner holds a live admin API key. Against a real SMTP
server (aiosmtpd)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.files import storage
from shared.infra import db
from support.mail import body_of, parsed
from support.stack import Api, Services, SmtpSink, StartWorker, postgres_config, storage_config


@pytest.fixture
async def pool(services: Services) -> AsyncIterator[db.Pool]:
    async with db.open_pool(postgres_config(services), migrate=False) as p:
        yield p


async def _artifact(
    pool: db.Pool, services: Services, *, owner: str, job_id: str, data: bytes,
    filename: str = "report.csv", content_type: str = "text/csv; charset=utf-8",
) -> str:  # fmt: skip
    async with storage.write_artifact(
        pool, storage_config(services), owner=owner, job_id=job_id, filename=filename, content_type=content_type
    ) as writer:
        await writer.write(data)
    return writer.stored.id


async def test_artifact_is_attached_under_its_new_name(
    api: Api, start_worker: StartWorker, smtp: SmtpSink, pool: db.Pool, services: Services
) -> None:
    data = b"type,status,jobs\nemail.send,succeeded,3\n"
    artifact_id = await _artifact(pool, services, owner="alice", job_id="job_report_1", data=data)
    await start_worker("default", smtp_port=smtp.port)
    job = await api.submit(
        "email.send",
        {"to": ["a@example.com"], "subject": "Your report", "text": "Attached.",
         "attachments": [{"artifact_id": artifact_id, "filename": "june.csv"}, {"artifact_id": artifact_id}]},
    )  # fmt: skip

    await api.wait_status(job["id"], "succeeded")

    msg = parsed(smtp)
    assert body_of(msg, "plain") == "Attached.\n"
    files = list(msg.iter_attachments())
    assert [f.get_filename() for f in files] == ["june.csv", "report.csv"]
    for part in files:
        assert part.get_content_type() == "text/csv"
        assert part.get_param("charset") == "utf-8"
        assert part.get_payload(decode=True) == data


async def test_someone_elses_artifact_is_not_attached(
    api: Api, start_worker: StartWorker, smtp: SmtpSink, pool: db.Pool, services: Services
) -> None:
    artifact_id = await _artifact(pool, services, owner="bob", job_id="job_bobs_report", data=b"secret")
    await start_worker("default", smtp_port=smtp.port)
    job = await api.submit(
        "email.send",
        {"to": ["a@example.com"], "subject": "Hi", "text": "x", "attachments": [{"artifact_id": artifact_id}]},
    )

    failed = await api.wait_status(job["id"], "failed")

    assert failed["attempts"] == 1
    assert failed["error"]["type"] == "AttachmentNotFound"
    assert failed["error"]["retryable"] is False
    assert smtp.messages == []


@pytest.mark.parametrize(
    ("filename", "content_type", "sent_as"),
    [
        ("login.html", "text/html; charset=utf-8", None),
        ("logo.svg", "image/svg+xml", None),
        ("report.csv", "text/csv", "invoice.html"),
    ],
    ids=["html", "svg", "renamed-to-html"],
)
async def test_a_user_may_not_attach_a_file_that_opens_as_a_web_page(
    api: Api, start_worker: StartWorker, smtp: SmtpSink, pool: db.Pool, services: Services,
    filename: str, content_type: str, sent_as: str | None,
) -> None:  # fmt: skip
    """An HTML or SVG attachment is a page from MAIL_FROM whose links nothing checked."""
    page = b'<a href="https://evil.example/login">Sign in to see your invoice</a>'
    artifact_id = await _artifact(
        pool, services, owner="alice", job_id="job_page", data=page, filename=filename, content_type=content_type
    )
    await start_worker("default", smtp_port=smtp.port)
    attachment = {"artifact_id": artifact_id, **({"filename": sent_as} if sent_as else {})}
    job = await api.submit(
        "email.send", {"to": ["a@example.com"], "subject": "Invoice", "text": "Attached.", "attachments": [attachment]}
    )

    failed = await api.wait_status(job["id"], "failed")

    assert failed["attempts"] == 1
    assert failed["error"]["type"] == "AttachmentNotAllowed"
    assert failed["error"]["retryable"] is False
    assert (sent_as or filename) in failed["error"]["message"]
    assert smtp.messages == []


async def test_an_owner_with_a_live_admin_api_key_may_attach_html(
    api: Api, start_worker: StartWorker, smtp: SmtpSink, pool: db.Pool, services: Services
) -> None:
    status, key, _ = await api.request(
        "POST", "/api/v1/api-keys", as_="root", role="admin", json={"name": "mailer", "sub": "mailer", "role": "admin"}
    )
    assert status == 201, key
    artifact_id = await _artifact(
        pool, services, owner="mailer", job_id="job_newsletter", data=b"<p>News</p>",
        filename="newsletter.html", content_type="text/html; charset=utf-8",
    )  # fmt: skip
    await start_worker("default", smtp_port=smtp.port)
    status, job, _ = await api.request(
        "POST", "/api/v1/jobs", headers={"Authorization": f"Bearer {key['token']}"},
        json={"type": "email.send", "payload": {"to": ["a@example.com"], "subject": "News", "text": "Attached.",
                                                "attachments": [{"artifact_id": artifact_id}]}},
    )  # fmt: skip
    assert status == 202, job

    await api.wait_status(job["id"], "succeeded", as_="mailer")

    assert [f.get_filename() for f in parsed(smtp).iter_attachments()] == ["newsletter.html"]
