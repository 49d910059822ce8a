"""Local mail catcher: an aiosmtpd SMTP server that saves every message it receives as an .eml file.

Caught mail is as private as a mailbox: the folder is 0700 and each message 0600, whatever the umask.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

logger = logging.getLogger(__name__)

ACCEPTED = "250 Message accepted for delivery"


class EmlWriter:
    """aiosmtpd handler: each message becomes `<directory>/<UTC timestamp>-<random>.eml`.

    The envelope goes first as `X-MailFrom`/`X-RcptTo` headers (as aiosmtpd's own Message handler does), so
    Bcc recipients stay visible.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        head = f"X-MailFrom: {envelope.mail_from or ''}\r\nX-RcptTo: {', '.join(envelope.rcpt_tos)}\r\n"
        path = await asyncio.to_thread(self._write, head.encode("utf-8", errors="replace") + content)
        logger.info("mail.caught", extra={"file": str(path), "recipients": len(envelope.rcpt_tos)})
        return ACCEPTED

    def _write(self, data: bytes) -> Path:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.directory / f"{stamp}-{secrets.token_hex(3)}.eml"
        partial = path.with_suffix(".part")  # renamed when complete, so watchers never see half a message
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        partial.replace(path)
        return path


@asynccontextmanager
async def catch_mail(directory: Path = Path("var/mail"), host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[int]:
    """Serve SMTP (no TLS, no auth) on `host:port` until the block exits; yields the bound port (useful with 0)."""
    await asyncio.to_thread(directory.mkdir, mode=0o700, parents=True, exist_ok=True)
    handler = EmlWriter(directory)
    loop = asyncio.get_running_loop()
    # A fixed hostname: aiosmtpd's default is socket.getfqdn(), a DNS lookup that can stall start-up.
    server = await loop.create_server(lambda: SMTP(handler, hostname="localhost"), host, port)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()
