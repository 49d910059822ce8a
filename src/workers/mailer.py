"""What a worker's mailer is (one per process, in WorkerContext): the message handed to it and the outcome.

The email family sends through it; its SMTP implementation is workers.families.email.sender.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class MailAttachment:
    filename: str
    content_type: str  # e.g. "text/csv; charset=utf-8"
    data: bytes


@dataclass(frozen=True, slots=True)
class OutgoingMail:
    to: Sequence[str]
    subject: str
    text: str | None
    html: str | None
    cc: Sequence[str] = ()
    bcc: Sequence[str] = ()
    reply_to: str | None = None
    attachments: Sequence[MailAttachment] = ()


@dataclass(frozen=True, slots=True)
class SendOutcome:
    message_id: str
    accepted: list[str]
    refused: dict[str, str]


class MailSender(Protocol):
    async def send(self, mail: OutgoingMail, *, message_id: str) -> SendOutcome: ...
