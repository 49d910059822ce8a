"""The record of accepted mail, so a retried `email.send` job never sends its message twice.

The row is written in its own short transaction right after the SMTP server's final 250, before anything
else can fail. What remains is the window between that 250 and the commit (a crash or a ledger outage
longer than the in-place retries there): the next attempt sends again, with the same Message-ID, which
receivers can use to drop the duplicate.
"""

from __future__ import annotations

import asyncio
import logging

from shared.infra.db import POSTGRES_ERRORS, Connection, Pool
from workers.mailer import SendOutcome

logger = logging.getLogger(__name__)

# In-place retries of the record through a ledger blip (about 8 s), as for a job's outcome.
RECORD_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 4.0)


async def find_sent(conn: Connection | Pool, job_id: str) -> SendOutcome | None:
    row = await conn.fetchrow("SELECT message_id, accepted, refused FROM mail_log WHERE job_id = $1", job_id)
    if row is None:
        return None
    return SendOutcome(message_id=row["message_id"], accepted=list(row["accepted"]), refused=dict(row["refused"]))


async def _insert(conn: Connection | Pool, job_id: str, sent: SendOutcome) -> None:
    await conn.execute(
        "INSERT INTO mail_log (job_id, message_id, accepted, refused) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (job_id) DO NOTHING",
        job_id,
        sent.message_id,
        sent.accepted,
        sent.refused,
    )


async def record_sent(pool: Pool, job_id: str, sent: SendOutcome) -> bool:
    """Record an accepted send, retrying through a ledger blip; False if it could not be recorded.

    Never raises for an unreachable ledger: the mail is gone either way, and failing the attempt here would
    make the retry send it again for certain, whereas the job's own outcome write may still get through.
    """
    for delay in (*RECORD_BACKOFF_S, None):
        try:
            await _insert(pool, job_id, sent)
            return True
        except POSTGRES_ERRORS as exc:
            logger.warning("email.log_write_retry", extra={"reason": type(exc).__name__, "in_s": delay})
        if delay is None:
            return False
        await asyncio.sleep(delay)
    return False
