"""Job family `email`: transactional mail over SMTP, from a body or a template, with artifacts attached."""

from __future__ import annotations

import asyncio
import logging

import aiosmtplib

from shared.core.errors import JobDeferred, PermanentJobError, RetryableJobError
from shared.files import storage
from shared.infra.redis import REDIS_ERRORS
from shared.jobtypes import email_policy
from shared.jobtypes.email import EMAIL_SEND, EmailPayload, EmailResult
from shared.jobtypes.email_policy import RecipientPolicy
from workers.context import JobContext
from workers.families.email import links, sent_log
from workers.families.email.links import LinkNotAllowed, LinkPolicy
from workers.families.email.rendering import TemplateProblem, render
from workers.families.email.sender import message_id_for
from workers.mailer import MailAttachment, OutgoingMail, SendOutcome
from workers.runtime import AnyHandler, bind

logger = logging.getLogger(__name__)

# What one message may carry in attachments, in all (most servers refuse messages over 25 MB once encoded).
MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024

# Connection-level trouble: the server may be back in a moment.
_TRANSIENT = (
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPTimeoutError,
    aiosmtplib.SMTPConnectTimeoutError,
    OSError,
)


async def handle_send(job: JobContext, payload: EmailPayload) -> EmailResult:
    """Send one message, at most once per job: a send the server accepted is recorded (`sent_log`), and a
    later attempt returns that record instead of sending again. The Message-ID is derived from the
    job id, so even a send repeated through the remaining window is recognisably the same message.

    Before anything is sent: every recipient (and the Reply-To) must be one the owner may write to, no
    attachment may open as a web page unless the owner is an admin, and every link of the subject and
    body must be one the mail may carry (else the job fails); the owner's hourly budget must have room for
    its recipients (else the job waits, using no attempt).

    Refused recipients (all of them) and other 5xx replies fail the job; 4xx replies and connection errors retry.
    """
    worker = job.worker
    earlier = await sent_log.find_sent(worker.pg, job.job_id)
    if earlier is not None:
        logger.info("email.already_sent")
        return _result(earlier)
    await _check_recipients(job, payload)
    mail = await _compose(job, payload)
    _check_links(job, mail)
    await _take_budget(job, mail)
    sent = await _send(job, mail)
    if not await sent_log.record_sent(worker.pg, job.job_id, sent):
        logger.error("email.sent_unrecorded")  # a retry of this job would send again
    worker.metrics.smtp.labels("sent").inc()
    logger.info("email.sent", extra={"accepted": len(sent.accepted), "refused": len(sent.refused)})
    return _result(sent)


async def _check_recipients(job: JobContext, payload: EmailPayload) -> None:
    """Hold every recipient, and the Reply-To (where answers to a mail from MAIL_FROM go), to the owner's
    policy: the user one, unless the owner holds a live admin API key (the ledger does not know which role
    created the job, nor whether a schedule or batch did).

    Raises:
        PermanentJobError: `RecipientNotAllowed`, naming the first refused address.
    """
    config = job.worker.settings.mail_policy
    policy = RecipientPolicy.for_role(config, admin=False)
    reply_to = [payload.reply_to] if payload.reply_to is not None else []
    refused = [a for a in (*payload.to, *payload.cc, *payload.bcc, *reply_to) if not policy.allows(a)]
    if not refused or await email_policy.owner_is_admin(job.worker.pg, job.owner):
        return
    raise PermanentJobError(
        f"{policy.refusal(refused[0])} ({len(refused)} refused in all, and `{job.owner}` holds no admin API key;"
        " nothing was sent)",
        type_name="RecipientNotAllowed",
    )


def _check_links(job: JobContext, mail: OutgoingMail) -> None:
    """Every link of the mail as it is about to be sent (subject, text, HTML) must lead to PUBLIC_URL's host
    or a MAIL_LINK_HOSTS one.

    Raises:
        PermanentJobError: `LinkNotAllowed`.
    """
    settings = job.worker.settings
    policy = LinkPolicy.from_settings(settings.mail_policy, settings.storage.public_url)
    try:
        policy.check_mail(mail.text, mail.html, subject=mail.subject)
    except LinkNotAllowed as exc:
        raise PermanentJobError(f"{exc}; nothing was sent", type_name="LinkNotAllowed") from exc


async def _take_budget(job: JobContext, mail: OutgoingMail) -> None:
    """Count the mail's recipients against the owner's MAIL_PER_OWNER_PER_HOUR; counted once per job, so a
    retry after a transient SMTP error is not counted again.

    Raises:
        JobDeferred: the hour's budget is spent; the job waits until the window has room.
        PermanentJobError: `TooManyRecipients`, more than a whole hour's budget.
        RetryableJobError: the cache is unreachable (sending uncounted would lift the limit).
    """
    worker = job.worker
    per_hour = worker.settings.mail_policy.per_owner_per_hour
    recipients = email_policy.distinct_recipients([*mail.to, *mail.cc, *mail.bcc])
    if recipients > per_hour:
        raise PermanentJobError(
            f"{recipients} recipients, over MAIL_PER_OWNER_PER_HOUR ({per_hour}): split the mail",
            type_name="TooManyRecipients",
        )
    try:
        wait_s = await email_policy.take_budget(
            worker.cache, job.owner, job.job_id, recipients=recipients, per_hour=per_hour
        )
    except REDIS_ERRORS as exc:
        raise RetryableJobError("the mail budget could not be checked", type_name="MailBudgetUnavailable") from exc
    if wait_s > 0:
        raise JobDeferred(f"the owner's mail budget for the hour is spent; room in {wait_s:g}s", wait_s=wait_s)


def _result(sent: SendOutcome) -> EmailResult:
    return EmailResult(message_id=sent.message_id, accepted=sent.accepted, refused=sent.refused)


async def _compose(job: JobContext, payload: EmailPayload) -> OutgoingMail:
    subject, text, html = payload.subject, payload.text, payload.html
    if payload.template is not None:
        try:
            rendered = render(job.worker.settings.smtp.templates_dir, payload.template, subject, payload.context)
        except TemplateProblem as exc:
            raise PermanentJobError(str(exc), type_name=exc.kind) from exc
        subject, text, html = rendered.subject, rendered.text, rendered.html
    return OutgoingMail(
        to=list(payload.to), cc=list(payload.cc), bcc=list(payload.bcc), subject=subject, text=text, html=html,
        reply_to=payload.reply_to, attachments=await _attachments(job, payload),
    )  # fmt: skip


async def _attachments(job: JobContext, payload: EmailPayload) -> list[MailAttachment]:
    """The payload's artifacts, which must be the job owner's own (anyone else's is as good as absent)."""
    worker = job.worker
    found: list[tuple[storage.StoredFile, str]] = []
    for wanted in payload.attachments:
        stored = await storage.find_file(
            worker.pg, worker.settings.storage, "artifact", wanted.artifact_id, owner=job.owner
        )
        if stored is None:
            raise PermanentJobError(f"no artifact {wanted.artifact_id!r}", type_name="AttachmentNotFound")
        found.append((stored, wanted.filename or stored.filename))
    await _check_pages(job, [(filename, stored.content_type) for stored, filename in found])
    total = sum(stored.size for stored, _ in found)
    if total > MAX_ATTACHMENT_BYTES:
        raise PermanentJobError(
            f"attachments total {total} bytes, over the limit of {MAX_ATTACHMENT_BYTES}",
            type_name="AttachmentsTooLarge",
        )
    attachments = []
    for stored, filename in found:
        try:
            data = await asyncio.to_thread(stored.path.read_bytes)
        except FileNotFoundError as exc:  # replaced by a re-run of its job since it was looked up
            raise RetryableJobError(f"artifact {stored.id!r} is being replaced", type_name="AttachmentMoved") from exc
        attachments.append(MailAttachment(filename=filename, content_type=stored.content_type, data=data))
    return attachments


async def _check_pages(job: JobContext, files: list[tuple[str, str]]) -> None:
    """Refuse attachments that open as a web page (HTML, XHTML, SVG, by type or name) unless the owner is
    an admin: their links and forms are not checked, and they arrive from MAIL_FROM.

    Raises:
        PermanentJobError: `AttachmentNotAllowed`, naming the first such file.
    """
    pages = [(name, content_type) for name, content_type in files if links.opens_as_a_page(name, content_type)]
    if not pages or await email_policy.owner_is_admin(job.worker.pg, job.owner):
        return
    name, content_type = pages[0]
    raise PermanentJobError(
        f"attachment {name!r} ({content_type}) would open as a web page, whose links mail may not carry:"
        " attach HTML, XHTML and SVG as another format (a PDF, an archive); only an admin may attach them;"
        " nothing was sent",
        type_name="AttachmentNotAllowed",
    )


async def _send(job: JobContext, mail: OutgoingMail) -> SendOutcome:
    worker = job.worker
    message_id = message_id_for(job.job_id, worker.settings.smtp.mail_from)
    outcome = worker.metrics.smtp
    try:
        return await worker.mailer.send(mail, message_id=message_id)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        outcome.labels("refused").inc()
        refused = ", ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        raise PermanentJobError(f"every recipient was refused ({refused})", type_name="SMTPRecipientsRefused") from exc
    except aiosmtplib.SMTPResponseException as exc:
        transient = 400 <= exc.code < 500
        outcome.labels("transient" if transient else "error").inc()
        message = f"the SMTP server answered {exc.code} {exc.message}"
        if transient:
            raise RetryableJobError(message, type_name=type(exc).__name__) from exc
        raise PermanentJobError(message, type_name=type(exc).__name__) from exc
    except _TRANSIENT as exc:
        outcome.labels("transient").inc()
        raise RetryableJobError(f"SMTP server unreachable: {exc}", type_name=type(exc).__name__) from exc


HANDLERS: list[AnyHandler] = [bind(EMAIL_SEND, handle_send)]
