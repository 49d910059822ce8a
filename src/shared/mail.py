"""MailSender Protocol, the SMTP implementation on aiosmtplib, and message building."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import Protocol

import aiosmtplib

from shared.settings import SmtpConfig


@dataclass(frozen=True, slots=True)
class OutgoingMail:
    to: Sequence[str]
    subject: str
    text: str | None
    html: str | None
    cc: Sequence[str] = ()
    bcc: Sequence[str] = ()
    reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class SendOutcome:
    message_id: str
    accepted: list[str]
    refused: dict[str, str]


class MailSender(Protocol):
    async def send(self, mail: OutgoingMail, *, message_id: str) -> SendOutcome: ...


def message_id_for(key: str, mail_from: str) -> str:
    """A stable Message-ID per job, so a retried send is recognisable as the same message."""
    domain = parseaddr(mail_from)[1].rpartition("@")[2] or "conveyor.local"
    return f"<{key}@{domain}>"


def build_message(mail: OutgoingMail, *, mail_from: str, message_id: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = mail_from
    msg["To"] = ", ".join(mail.to)
    if mail.cc:
        msg["Cc"] = ", ".join(mail.cc)
    if mail.reply_to:
        msg["Reply-To"] = mail.reply_to
    msg["Subject"] = mail.subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = message_id
    if mail.text is not None:
        msg.set_content(mail.text)
        if mail.html is not None:
            msg.add_alternative(mail.html, subtype="html")
    elif mail.html is not None:
        msg.set_content(mail.html, subtype="html")
    return msg


class SmtpMailSender:
    """Sends through the SMTP server of the settings; raises aiosmtplib's errors for the caller to classify."""

    def __init__(self, config: SmtpConfig) -> None:
        self._config = config

    async def send(self, mail: OutgoingMail, *, message_id: str) -> SendOutcome:
        c = self._config
        msg = build_message(mail, mail_from=c.mail_from, message_id=message_id)
        recipients = [*mail.to, *mail.cc, *mail.bcc]
        refused, _ = await aiosmtplib.send(
            msg,
            sender=parseaddr(c.mail_from)[1],
            recipients=recipients,
            hostname=c.host,
            port=c.port,
            username=c.username,
            password=c.password.get_secret_value() if c.password else None,
            use_tls=c.tls == "tls",
            start_tls=c.tls == "starttls",
            timeout=c.timeout_s,
        )
        refused_map = {addr: f"{resp.code} {resp.message}" for addr, resp in refused.items()}
        accepted = [r for r in recipients if r not in refused_map]
        return SendOutcome(message_id=message_id, accepted=accepted, refused=refused_map)
