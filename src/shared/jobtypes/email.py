"""`email.send`: transactional mail over SMTP."""

from __future__ import annotations

import functools
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shared.core.settings import MailPolicyConfig
from shared.jobtypes.email_policy import RecipientPolicy
from shared.jobtypes.spec import Backoff, EmailAddress, JobSpec, Payload, Queue, Result

# The validation context key under which a new request's submitter policy is given (`submission_context`);
# without it (a stored request, the worker) no recipient is refused here: the worker checks on its own.
RECIPIENT_POLICY = "email_recipient_policy"


def submission_context(config: MailPolicyConfig, *, admin: bool) -> dict[str, Any]:
    """The validation context that holds a new request's `to`, `cc`, `bcc` and `reply_to` to its submitter's
    policy: a refused address is a 422 naming it (`["payload", "to", 3]`, `["payload", "reply_to"]`)."""
    return {RECIPIENT_POLICY: _policy(config, admin=admin)}


# Every request asks; the settings are frozen, so each (settings, role) pair is parsed once per process.
_policy = functools.lru_cache(maxsize=16)(RecipientPolicy.for_role)


def _allowed_recipient(address: str, info: ValidationInfo) -> str:
    policy = (info.context or {}).get(RECIPIENT_POLICY)
    if isinstance(policy, RecipientPolicy) and not policy.allows(address):
        raise PydanticCustomError("recipient_not_allowed", "{reason}", {"reason": policy.refusal(address)})
    return address


# A recipient: an address, and one the submitter may write to (see `submission_context`). `reply_to` is one
# too: replies to a mail from MAIL_FROM go there, so a free one would make any allowed mail a phishing mail.
Recipient = Annotated[EmailAddress, AfterValidator(_allowed_recipient)]

# Every line break `str.splitlines()` knows, for the published schema (the validator below is the check).
_LINE_BREAKS = r"\n\r\u000b\u000c\u001c\u001d\u001e\u0085\u2028\u2029"


class Attachment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    artifact_id: str = Field(min_length=1, max_length=64, description="An artifact of the job's owner.")
    filename: str | None = Field(
        None, min_length=1, max_length=255, pattern=r"^[^/\\\r\n]+$", description="Defaults to the artifact's own."
    )


# `_has_a_body` as the published schema states it: a `template` (with its `context`), or `text` and/or
# `html` (and no context). That `secret_context` names keys of `context` is said in its description: JSON
# Schema cannot compare two values.
_ONE_BODY: dict[str, JsonValue] = {
    "oneOf": [
        {
            "title": "template",
            "required": ["template"],
            "properties": {"template": {"type": "string"}, "text": {"type": "null"}, "html": {"type": "null"}},
        },
        {
            "title": "text and/or html",
            "properties": {
                "template": {"type": "null"},
                "context": {"maxProperties": 0},
                "secret_context": {"maxItems": 0},
            },
            "anyOf": [
                {"required": ["text"], "properties": {"text": {"type": "string"}}},
                {"required": ["html"], "properties": {"html": {"type": "string"}}},
            ],
        },
    ]
}


class EmailPayload(Payload):
    model_config = ConfigDict(json_schema_extra=_ONE_BODY)

    to: list[Recipient] = Field(min_length=1, max_length=50)
    cc: list[Recipient] = Field(default_factory=list, max_length=50)
    bcc: list[Recipient] = Field(default_factory=list, max_length=50)
    subject: str = Field(
        min_length=1, max_length=998, pattern=f"^[^{_LINE_BREAKS}]*$",
        description="One line: no line break of any kind (`\\n`, `\\r`, `\\u2028`, …).",
    )  # fmt: skip
    text: str | None = Field(None, max_length=512 * 1024, description="Not with `template`.")
    html: str | None = Field(None, max_length=512 * 1024, description="Not with `template`.")
    reply_to: Recipient | None = Field(None, description="Held to the same recipient policy as `to`.")
    template: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$",
        description="Render the body from this template (`<name>.txt` and/or `<name>.html` in the template folders).",
    )  # fmt: skip
    context: dict[str, JsonValue] = Field(
        default_factory=dict, max_length=100,
        description="Variables for the template (HTML is autoescaped); only with `template`.",
    )  # fmt: skip
    secret_context: list[str] = Field(
        default_factory=list, max_length=100,
        description="Keys of `context` whose values are secret: encrypted at rest, redacted when shown. A name"
        " that is not a key of `context` is a 422.",
    )  # fmt: skip
    attachments: list[Attachment] = Field(default_factory=list, max_length=10)

    @field_validator("subject")
    @classmethod
    def _one_line(cls, value: str) -> str:
        # A break the mail headers refuse would otherwise pass here and fail every attempt in the worker.
        if value.splitlines() != [value]:
            raise ValueError("must be one line: no line break of any kind")
        return value

    @model_validator(mode="after")
    def _has_a_body(self) -> EmailPayload:
        if self.template is not None and (self.text is not None or self.html is not None):
            raise ValueError("give either `template` (+ `context`) or `text`/`html`, not both")
        if self.template is None and self.text is None and self.html is None:
            raise ValueError("give `text`, `html` or both, or a `template`")
        if self.context and self.template is None:
            raise ValueError("`context` is only used with `template`")
        if unknown := set(self.secret_context) - set(self.context):
            raise ValueError(f"`secret_context` names keys not in `context`: {sorted(unknown)}")
        return self

    def secret_paths(self) -> list[tuple[str, ...]]:
        return [*super().secret_paths(), *(("context", key) for key in self.secret_context)]


class EmailResult(Result):
    message_id: str
    accepted: list[str]
    refused: dict[str, str]


EMAIL_SEND: JobSpec[EmailPayload, EmailResult] = JobSpec(
    name="email.send",
    description="Send a transactional email over SMTP; a refused recipient fails the job, transient errors retry.",
    queue=Queue.DEFAULT,
    payload_model=EmailPayload,
    result_model=EmailResult,
    max_attempts=8,
    backoff=Backoff(kind="exponential", base_s=5.0, max_s=900.0, jitter=True),
    timeout_s=60.0,
    max_timeout_s=300.0,
)
