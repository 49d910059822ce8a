"""The webhook wire format: body, headers and the `Conveyor-Signature` HMAC, shared by senders and receivers.

Every owner's deliveries are signed with that owner's own key, derived from WEBHOOK_SECRET and the owner
(`shared.jobtypes.webhook.signing_key`): a receiver holding owner A's key accepts nothing Conveyor sent on
behalf of anyone else, whatever `url`, `event` and `data` another tenant chose. An owner reads its key from
`GET /api/v1/webhook-signing-key`.

A receiver verifies a delivery with `verify(raw_body, request.headers, key, owner="<the owner it
expects>")` on the raw bytes it received (never on re-serialised JSON), and de-duplicates on
`Conveyor-Delivery`, which is the same on every retry of one job.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import time
from collections.abc import Mapping
from functools import cache
from importlib import metadata
from typing import Final
from urllib.parse import quote

from pydantic import JsonValue

from shared.core import json
from shared.jobtypes.webhook import key_id as key_id  # receivers and tests read both here
from shared.jobtypes.webhook import signing_key as signing_key

SIGNATURE_HEADER: Final = "Conveyor-Signature"
DELIVERY_HEADER: Final = "Conveyor-Delivery"
EVENT_HEADER: Final = "Conveyor-Event"
# Whose delivery it is (percent-encoded, see `owner_header`): lets a receiver pick the key before it
# parses the body. Not proof by itself: only the signature by that owner's key is.
OWNER_HEADER: Final = "Conveyor-Owner"
# How old a signed timestamp a receiver accepts by default: bounds replays of a captured delivery.
DEFAULT_TOLERANCE_S: Final = 300
# Header-safe as it is: visible ASCII but `%`; anything else (spaces, non-ASCII) is percent-encoded.
_HEADER_SAFE: Final = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def owner_header(owner: str) -> str:
    """`owner` as the value of `Conveyor-Owner`: as is unless it holds spaces, `%` or non-ASCII."""
    return quote(owner, safe=_HEADER_SAFE)


def sign(key: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of `"<timestamp>.<body>"`: the timestamp is signed so a replay cannot refresh it."""
    return hmac.new(key.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(key: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},k={key_id(key)},v1={sign(key, timestamp, body)}"


def signed_headers(secret: str, owner: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    """`Conveyor-Owner` and `Conveyor-Signature` of `owner`'s delivery `body`, signed with the owner's key."""
    key = signing_key(secret, owner)
    when = int(time.time()) if timestamp is None else timestamp
    return {OWNER_HEADER: owner_header(owner), SIGNATURE_HEADER: signature_header(key, when, body)}


def verify(
    body: bytes,
    headers: Mapping[str, str],
    key: str,
    *,
    owner: str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True if `body` is a delivery for `owner`, signed with `key` (that owner's key) within `tolerance_s`.

    `headers` are the request's (looked up case-insensitively). A delivery another owner's job made fails:
    its `Conveyor-Owner` names that owner, and it is signed with that owner's key. Several `v1=` entries
    are accepted (any one matching is enough).
    """
    found = {name.lower(): value for name, value in headers.items()}
    if found.get(OWNER_HEADER.lower()) != owner_header(owner):
        return False
    timestamp: int | None = None
    signatures: list[str] = []
    for part in found.get(SIGNATURE_HEADER.lower(), "").split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isascii() and value.isdigit():
            timestamp = int(value)
        elif name == "v1" and value:
            signatures.append(value)
    if timestamp is None or not signatures:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(key, timestamp, body).encode()
    return any(hmac.compare_digest(expected, s.encode()) for s in signatures)  # bytes: any header text compares


def delivery_id(job_id: str) -> str:
    """The delivery's id, derived from its job's: every retry of one job is the same delivery."""
    return "dlv_" + job_id.removeprefix("job_")


def body(delivery: str, event: str, data: JsonValue, created_at: dt.datetime, *, owner: str) -> bytes:
    """`{"id", "event", "created_at", "owner", "data"}` as compact JSON: identical bytes on every attempt.

    `owner` is the subject that submitted the delivery, the one whose key signs it.
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
