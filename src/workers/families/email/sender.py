"""The SMTP implementation of workers.mailer.MailSender on aiosmtplib, and message building."""

from __future__ import annotations

from email.message import EmailMessage, Message
from email.utils import collapse_rfc2231_value, formatdate, parseaddr

import aiosmtplib

from shared.core.settings import SmtpConfig
from workers.mailer import MailAttachment, OutgoingMail, SendOutcome


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
    for attachment in mail.attachments:
        _attach(msg, attachment)
    return msg


def _attach(msg: EmailMessage, attachment: MailAttachment) -> None:
    """Add a file part (base64), keeping the type's parameters (a CSV's charset); unknown types go as octets."""
    header = Message()
    header["Content-Type"] = attachment.content_type
    maintype, subtype = header.get_content_maintype(), header.get_content_subtype()
    params = {k: collapse_rfc2231_value(v) for k, v in header.get_params(failobj=[])[1:]}
    declared = attachment.content_type.partition(";")[0].strip().lower()
    if maintype == "multipart" or declared != f"{maintype}/{subtype}":  # malformed, or a container type
        maintype, subtype, params = "application", "octet-stream", {}
    msg.add_attachment(attachment.data, maintype=maintype, subtype=subtype, filename=attachment.filename, params=params)


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
