"""Job family `email`: transactional mail over SMTP."""

from __future__ import annotations

import logging

import aiosmtplib

from shared.errors import PermanentJobError, RetryableJobError
from shared.jobs import EmailPayload, EmailResult
from shared.mail import OutgoingMail, message_id_for
from workers.context import JobContext

logger = logging.getLogger(__name__)

# Connection-level trouble: the server may be back in a moment.
_TRANSIENT = (
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPTimeoutError,
    aiosmtplib.SMTPConnectTimeoutError,
    OSError,
)


async def handle_send(job: JobContext, payload: EmailPayload) -> EmailResult:
    """Send one message; its Message-ID is derived from the job id, so every attempt sends the same message.

    Refused recipients (all of them) and other 5xx replies fail the job; 4xx replies and connection errors retry.
    """
    worker = job.worker
    mail = OutgoingMail(
        to=list(payload.to), cc=list(payload.cc), bcc=list(payload.bcc), subject=payload.subject,
        text=payload.text, html=payload.html, reply_to=payload.reply_to,
    )  # fmt: skip
    message_id = message_id_for(job.job_id, worker.settings.smtp.mail_from)
    outcome = worker.metrics.smtp
    try:
        sent = await worker.mailer.send(mail, message_id=message_id)
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
    outcome.labels("sent").inc()
    logger.info("email.sent", extra={"accepted": len(sent.accepted), "refused": len(sent.refused)})
    return EmailResult(message_id=sent.message_id, accepted=sent.accepted, refused=sent.refused)
