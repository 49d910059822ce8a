"""The configuration sections of what a deployment allows: limits, storage, webhooks, mail, job types, results.

Read by both processes (shared.core.settings composes them); see shared.core.config for the conventions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, HttpUrl, SecretStr, model_validator
from pydantic_settings import BaseSettings

from shared.core.config import Environment, env, environment_field, read_by, section_config


class StorageConfig(BaseSettings):
    """Uploads and artifacts on disk (shared by the gateway and workers: one volume in production)."""

    model_config = section_config("Storage")

    dir: Path = Field(
        Path("var/storage"),
        validation_alias=env("STORAGE_DIR"),
        description="uploads and artifacts (one shared volume for the gateway and workers)",
    )
    max_upload_bytes: int = Field(
        1024**3,
        ge=1,
        validation_alias=env("MAX_UPLOAD_BYTES"),
        description="largest upload (413 beyond, nothing kept)",
        json_schema_extra=read_by("gateway"),
    )
    quota_bytes: int = Field(
        10 * 1024**3,
        ge=1,
        validation_alias=env("STORAGE_QUOTA_BYTES"),
        description="bytes of uploads and artifacts one owner may keep (413 `storage_quota_exceeded` beyond)",
    )
    # Where clients reach the gateway (e.g. https://jobs.example.com): makes links in mail absolute.
    public_url: HttpUrl | None = Field(
        None,
        validation_alias=env("PUBLIC_URL"),
        description="where clients reach the gateway (`https://jobs.example.com`): links in mail and reports are "
        "made absolute with it; a base URL (scheme, host and path only)",
        json_schema_extra=read_by("workers"),
    )

    @model_validator(mode="after")
    def _public_url_is_a_base(self) -> Self:
        url = self.public_url
        if url is not None and (url.query or url.fragment or url.username or url.password):
            raise ValueError("PUBLIC_URL must be a base URL: scheme, host and path only")
        return self


class WebhookConfig(BaseSettings):
    """Outbound webhooks: signing, where they may go, timeouts and each host's circuit breaker."""

    model_config = section_config("Webhooks")

    secret: SecretStr | None = Field(
        None,
        validation_alias=env("WEBHOOK_SECRET"),
        description="master secret of webhook signing: each owner's deliveries are signed with a key derived from "
        "it and the owner (`GET /api/v1/webhook-signing-key`); set the same value on the gateway and the workers; "
        "deliveries are unsigned when it is unset",
    )
    allow_private: bool = Field(
        False,
        validation_alias=env("WEBHOOK_ALLOW_PRIVATE"),
        description="allow webhooks to loopback, private, link-local and metadata addresses",
        json_schema_extra=read_by("workers"),
    )
    timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        validation_alias=env("WEBHOOK_TIMEOUT_S"),
        description="connect + response time of one delivery attempt, in seconds",
        json_schema_extra=read_by("workers"),
    )
    breaker_failures: int = Field(
        5,
        ge=1,
        validation_alias=env("WEBHOOK_BREAKER_FAILURES"),
        description="a host's circuit opens after this many consecutive failures",
        json_schema_extra=read_by("workers"),
    )
    breaker_open_s: float = Field(
        30.0,
        gt=0,
        validation_alias=env("WEBHOOK_BREAKER_OPEN_S"),
        description="how long an open circuit stays open, in seconds",
        json_schema_extra=read_by("workers"),
    )


class SecurityConfig(BaseSettings):
    """Rate limits and caps on what one principal may hold (the workers count the job caps too)."""

    model_config = section_config("Limits")

    rate_limit_per_minute: int = Field(
        600,
        ge=1,
        validation_alias=env("RATE_LIMIT_PER_MINUTE"),
        description="requests per principal per minute, across every gateway",
        json_schema_extra=read_by("gateway"),
    )
    auth_failures_per_minute: int = Field(
        30,
        ge=1,
        validation_alias=env("AUTH_FAILURES_PER_MINUTE"),
        description="failed authentications per client IP per minute",
        json_schema_extra=read_by("gateway"),
    )
    max_queued_per_owner: int = Field(
        10_000,
        ge=1,
        validation_alias=env("MAX_QUEUED_PER_OWNER"),
        description="jobs one owner may have waiting (queued, scheduled, retrying), however they are made "
        "(requests, batches, retries, schedule fires, `on_complete`); 429 beyond",
    )
    sse_per_principal: int = Field(
        20,
        ge=1,
        validation_alias=env("SSE_MAX_PER_PRINCIPAL"),
        description="open event streams per principal",
        json_schema_extra=read_by("gateway"),
    )
    trust_forwarded_for: bool = Field(
        False,
        validation_alias=env("TRUST_X_FORWARDED_FOR"),
        description="take the client IP from `X-Forwarded-For` (only behind a proxy you run)",
        json_schema_extra=read_by("gateway"),
    )
    forwarded_for_hops: int = Field(
        1,
        ge=1,
        le=10,
        validation_alias=env("FORWARDED_FOR_HOPS"),
        description="how many proxies of yours append to `X-Forwarded-For`: the client is that many entries "
        "from the right",
        json_schema_extra=read_by("gateway"),
    )
    max_schedules_per_owner: int = Field(
        100,
        ge=1,
        validation_alias=env("MAX_SCHEDULES_PER_OWNER"),
        description="schedules one owner may keep; 409 `schedule_limit_reached` beyond",
        json_schema_extra=read_by("gateway"),
    )


class JobTypesConfig(BaseSettings):
    """Which optional job types this deployment offers (read by both sides, so both agree)."""

    model_config = section_config("Job types")

    environment: Environment = environment_field()
    system_echo: bool | None = Field(
        None,
        validation_alias=env("SYSTEM_ECHO_ENABLED"),
        description="offer `system.echo` (sleeps, fails on demand: a test tool); unset: on under "
        "`ENVIRONMENT=development` only",
    )

    @property
    def echo_enabled(self) -> bool:
        return self.environment is Environment.DEVELOPMENT if self.system_echo is None else self.system_echo


class MailPolicyConfig(BaseSettings):
    """Who `email.send` may write to, how often, and which links its templates may carry (both sides)."""

    model_config = section_config("Mail policy")

    environment: Environment = environment_field()
    allowed_recipients: str = Field(
        "",
        validation_alias=env("MAIL_ALLOWED_RECIPIENTS"),
        description="comma-separated domains (`example.com`, exact: list sub-domains on their own) and addresses "
        "(`ops@example.org`) a `user` may mail, checked at submission and at sending; admins may mail anyone. "
        "Unset: anyone in development, nobody otherwise",
    )
    per_owner_per_hour: int = Field(
        200,
        ge=1,
        validation_alias=env("MAIL_PER_OWNER_PER_HOUR"),
        description="recipients (to + cc + bcc) one owner may mail per sliding hour; a mail past it waits, "
        "using no attempt",
        json_schema_extra=read_by("workers"),
    )
    link_hosts: str = Field(
        "",
        validation_alias=env("MAIL_LINK_HOSTS"),
        description="comma-separated hosts mail may link to besides `PUBLIC_URL`'s; with neither set, any host in "
        "development, none otherwise",
        json_schema_extra=read_by("workers"),
    )


class JobStoreConfig(BaseSettings):
    """How long results (Redis) and finished jobs (ledger) are kept, and how large a result may be."""

    model_config = section_config("Results and retention")

    # Short on purpose: the ledger keeps every result for RETENTION_DAYS and every read of a job comes from it;
    # arq's copy in Redis only serves arq's own tooling right after a run. A day of copies at 1,500 jobs/s would
    # hold about 130 million results in Redis memory; a minute holds about 90,000.
    result_ttl_s: int = Field(
        60,
        ge=0,
        validation_alias=env("RESULT_TTL_S"),
        description="how long arq keeps its copy of a job's result in Redis, in seconds; `0`: none (the ledger keeps"
        " every result for RETENTION_DAYS regardless, and the API reads it from there)",
        json_schema_extra=read_by("workers"),
    )
    result_max_bytes: int = Field(
        256 * 1024,
        ge=1024,
        validation_alias=env("RESULT_MAX_BYTES"),
        description="largest result (its JSON) a job may store; a larger one fails the job with `ResultTooLarge` "
        "(write big output to an artifact)",
        json_schema_extra=read_by("workers"),
    )
    retention_days: float = Field(
        7,
        gt=0,
        validation_alias=env("RETENTION_DAYS"),
        description="finished jobs are deleted from the ledger this long after they finished (the scheduler, "
        "every minute)",
        json_schema_extra=read_by("workers"),
    )
