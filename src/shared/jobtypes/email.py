"""`email.send`: transactional mail over SMTP."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from shared.jobs import Backoff, EmailAddress, JobSpec, Payload, Queue, Result


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

    to: list[EmailAddress] = Field(min_length=1, max_length=50)
    cc: list[EmailAddress] = Field(default_factory=list, max_length=50)
    bcc: list[EmailAddress] = Field(default_factory=list, max_length=50)
    subject: str = Field(min_length=1, max_length=998, pattern=r"^[^\r\n]*$", description="One line.")
    text: str | None = Field(None, max_length=512 * 1024, description="Not with `template`.")
    html: str | None = Field(None, max_length=512 * 1024, description="Not with `template`.")
    reply_to: EmailAddress | None = None
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
