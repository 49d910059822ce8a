"""Reading what the SMTP sink received: a message as an EmailMessage, and one of its bodies as text."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

from support.stack import SmtpSink


def parsed(sink: SmtpSink, index: int = 0) -> EmailMessage:
    """The `index`-th message the sink accepted, parsed with the modern email policy."""
    content = sink.messages[index].content
    assert isinstance(content, bytes)
    msg = message_from_bytes(content, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def body_of(msg: EmailMessage, subtype: str) -> str:
    """The message's `text/<subtype>` body, with \\n line ends."""
    part = msg.get_body(preferencelist=(subtype,))
    assert part is not None
    assert part.get_content_subtype() == subtype
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")
