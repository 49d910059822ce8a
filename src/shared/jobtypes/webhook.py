"""`webhook.deliver`: a signed JSON POST to a subscriber's URL."""

from __future__ import annotations

import re

from pydantic import AnyHttpUrl, Field, JsonValue, field_validator

from shared.jobs import SECRET, Backoff, JobSpec, Payload, Queue, Result

_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
# Set by Conveyor itself; a caller may not override them.
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "content-type", "conveyor-signature", "conveyor-delivery", "conveyor-event",
     "transfer-encoding", "connection", "user-agent"}
)  # fmt: skip


class WebhookPayload(Payload):
    url: AnyHttpUrl = Field(description="http or https; private addresses are refused unless allowed.")
    event: str = Field(min_length=1, max_length=200, description="Sent as `Conveyor-Event` and in the body.")
    data: JsonValue = None
    headers: dict[str, str] = Field(
        default_factory=dict, max_length=20, json_schema_extra=SECRET,
        description="Extra request headers (secret: encrypted at rest, redacted when shown).",
    )  # fmt: skip

    @field_validator("url")
    @classmethod
    def _sane_url(cls, url: AnyHttpUrl) -> AnyHttpUrl:
        if len(str(url)) > 2048:
            raise ValueError("the URL is longer than 2048 characters")
        if url.username or url.password:
            raise ValueError("credentials in the URL are not allowed; use `headers`")
        return url

    @field_validator("headers")
    @classmethod
    def _sane_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by Conveyor")
            if len(value) > 4096 or any(c in value for c in "\r\n\0"):
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
