"""The webhook wire format: body, headers and the `Conveyor-Signature` HMAC, shared by senders and receivers.

A receiver verifies a delivery with `verify(secret, request.headers["Conveyor-Signature"], raw_body)` on the
raw bytes it received (never on re-serialised JSON), and de-duplicates on `Conveyor-Delivery`, which is the
same on every retry of one job.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import time
from functools import cache
from importlib import metadata
from typing import Final

from pydantic import JsonValue

from shared import json

SIGNATURE_HEADER: Final = "Conveyor-Signature"
DELIVERY_HEADER: Final = "Conveyor-Delivery"
EVENT_HEADER: Final = "Conveyor-Event"
# How old a signed timestamp a receiver accepts by default: bounds replays of a captured delivery.
DEFAULT_TOLERANCE_S: Final = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of `"<timestamp>.<body>"`: the timestamp is signed so a replay cannot refresh it."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def verify(
    secret: str, header: str, body: bytes, *, tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None
) -> bool:
    """True if `header` carries a `v1` signature of `body` by `secret` made within `tolerance_s` of now.

    Several `v1=` entries are accepted (any one matching is enough), so a sender may sign with an old and a
    new secret while they are rotated.
    """
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1" and value:
            signatures.append(value)
    if timestamp is None or not signatures:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, s) for s in signatures)


def delivery_id(job_id: str) -> str:
    """The delivery's id, derived from its job's: every retry of one job is the same delivery."""
    return "dlv_" + job_id.removeprefix("job_")


def body(delivery: str, event: str, data: JsonValue, created_at: dt.datetime, *, owner: str) -> bytes:
    """`{"id", "event", "created_at", "owner", "data"}` as compact JSON: identical bytes on every attempt.

    `owner` is the subject that submitted the delivery. Every delivery is signed with the one
    WEBHOOK_SECRET while `url`, `event` and `data` are the submitter's, so a receiver must check `owner`
    against the subject it expects: a valid signature alone only says Conveyor sent it, not for whom.
    """
    return json.dumps(
        {"id": delivery, "event": event, "created_at": json.rfc3339(created_at), "owner": owner, "data": data}
    )


@cache
def user_agent() -> str:
    try:
        version = metadata.version("conveyor")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        version = "0"
    return f"Conveyor-Webhooks/{version}"
