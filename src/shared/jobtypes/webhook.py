"""`webhook.deliver`: a JSON POST to a subscriber's URL, signed with its owner's key."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Annotated, Final

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import AnyHttpUrl, BeforeValidator, Field, JsonValue, field_validator

from shared.jobtypes.spec import SECRET, Backoff, JobSpec, Payload, Queue, Result

MAX_URL_CHARS = 2048
# What the URL must look like as given (then it is parsed, and normalized: an IRI's non-ASCII is
# percent-encoded): http(s), and no spaces or control characters, which a parser would otherwise strip.
_URL = re.compile(r"^[Hh][Tt][Tt][Pp][Ss]?://[^\x00-\x20\x7f]+$")
MAX_HEADER_VALUE_CHARS = 4096
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
# Set by Conveyor itself; a caller may not override them.
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "content-type", "conveyor-signature", "conveyor-delivery", "conveyor-event",
     "conveyor-owner", "transfer-encoding", "connection", "user-agent"}
)  # fmt: skip


def _any_case(name: str) -> str:
    """A JSON Schema pattern for `name` in any case (ECMA-262 patterns take no inline flags)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in name)


# `_sane_headers` as the published schema states it.
_HEADERS_SCHEMA: dict[str, JsonValue] = {
    "propertyNames": {
        "pattern": _HEADER_NAME.pattern,
        "not": {"pattern": f"^({'|'.join(_any_case(n) for n in sorted(RESERVED_HEADERS))})$"},
    },
    "additionalProperties": {"type": "string", "maxLength": MAX_HEADER_VALUE_CHARS, "pattern": "^[^\\r\\n]*$"},
    **SECRET,
}


def _plain_url(value: object) -> object:
    if isinstance(value, str):
        if len(value) > MAX_URL_CHARS:
            raise ValueError(f"the URL is longer than {MAX_URL_CHARS} characters")
        if _URL.fullmatch(value) is None:
            raise ValueError("must be an http:// or https:// URL with no spaces or control characters")
    return value


class WebhookPayload(Payload):
    url: Annotated[AnyHttpUrl, BeforeValidator(_plain_url)] = Field(
        description="http or https (an IRI's other characters are percent-encoded when sent); private addresses"
        " are refused unless allowed; no credentials (use `headers`).",
        json_schema_extra={"format": "iri", "maxLength": MAX_URL_CHARS, "pattern": _URL.pattern},
    )
    event: str = Field(min_length=1, max_length=200, description="Sent as `Conveyor-Event` and in the body.")
    data: JsonValue = None
    headers: dict[str, str] = Field(
        default_factory=dict, max_length=20, json_schema_extra=_HEADERS_SCHEMA,
        description="Extra request headers (secret: encrypted at rest, redacted when shown).",
    )  # fmt: skip

    @field_validator("url")
    @classmethod
    def _sane_url(cls, url: AnyHttpUrl) -> AnyHttpUrl:
        if url.username or url.password:
            raise ValueError("credentials in the URL are not allowed; use `headers`")
        return url

    @field_validator("headers")
    @classmethod
    def _sane_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by Conveyor")
            if len(value) > MAX_HEADER_VALUE_CHARS or any(c in value for c in "\r\n\0"):
                raise ValueError(f"the value of header {name!r} is too long or not a single line")
        return headers


class WebhookResult(Result):
    status_code: int
    duration_ms: float
    attempt: int


WEBHOOK_DELIVER: JobSpec[WebhookPayload, WebhookResult] = JobSpec(
    name="webhook.deliver",
    description="POST a signed JSON event to a URL; network errors, 5xx, 408 and 429 retry, other 4xx fail.",
    queue=Queue.DEFAULT,
    payload_model=WebhookPayload,
    result_model=WebhookResult,
    max_attempts=10,
    backoff=Backoff(kind="exponential", base_s=2.0, max_s=3600.0, jitter=True),
    timeout_s=30.0,
    max_timeout_s=120.0,
)


# The per-owner signing key: derived by the workers that sign and by the gateway that hands it to its owner.
KEY_PREFIX: Final = "whsk_"
KEY_ID_PREFIX: Final = "whk_"
# HKDF's salt and context: fixed, so every process derives the same key; versioned, so a future scheme
# can never produce the same keys.
_HKDF_SALT: Final = b"conveyor webhook signing keys"
_HKDF_INFO: Final = b"conveyor/webhook-signing-key/v1\x00"


def signing_key(secret: str, owner: str) -> str:
    """The key that signs `owner`'s deliveries: HKDF-SHA256 of WEBHOOK_SECRET with the owner as context.

    One key per owner: holding one says nothing about another owner's key nor about the secret, and the
    same secret and owner give the same key in every process (gateways and workers agree without storing it).
    """
    hkdf = HKDF(algorithm=SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO + owner.encode())
    return KEY_PREFIX + base64.urlsafe_b64encode(hkdf.derive(secret.encode())).rstrip(b"=").decode()


def key_id(key: str) -> str:
    """A short public name of a signing key (a hash of it): tells a receiver which key signed a delivery."""
    return KEY_ID_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:16]
