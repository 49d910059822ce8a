"""Each process's settings: the sections it reads, composed, and nothing it does not need.

The sections of one process live here (gateway, workers, SMTP, `conveyor run`); the sections both read
live in shared.core.config and shared.core.policy_config, and every name is re-exported from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings

from shared.core.config import (
    DEV_JWT_SECRET,
    JWT_HOWTO,
    KEYS_HOWTO,
    AuthConfig,
    CryptoConfig,
    Environment,
    LogConfig,
    PostgresConfig,
    RedisConfig,
    env,
    is_loopback,
    refuse,
    section_config,
)
from shared.core.policy_config import (
    JobStoreConfig,
    JobTypesConfig,
    MailPolicyConfig,
    SecurityConfig,
    StorageConfig,
    WebhookConfig,
)

__all__ = [
    "DEV_JWT_SECRET",
    "GATEWAY_METRICS_PORT",
    "JWT_HOWTO",
    "KEYS_HOWTO",
    "MAX_PROCESSES_PER_QUEUE",
    "AuthConfig",
    "CryptoConfig",
    "Environment",
    "GatewayConfig",
    "GatewaySettings",
    "JobStoreConfig",
    "JobTypesConfig",
    "LogConfig",
    "MailPolicyConfig",
    "PostgresConfig",
    "RedisConfig",
    "RunConfig",
    "SecurityConfig",
    "SmtpConfig",
    "StorageConfig",
    "WebhookConfig",
    "WorkerConfig",
    "WorkerSettings",
    "describe_errors",
    "is_loopback",
]

MAX_PROCESSES_PER_QUEUE = 32  # `conveyor run`: worker processes per queue
GATEWAY_METRICS_PORT = 9100  # the gateway's /metrics listener outside development, unless METRICS_PORT says


class GatewayConfig(BaseSettings):
    """The gateway's listeners, request limits and queue alerts."""

    model_config = section_config("Gateway")

    host: str = Field("127.0.0.1", validation_alias=env("API_HOST"), description="the API's bind address")
    port: int = Field(8080, ge=0, le=65535, validation_alias=env("API_PORT"), description="the API's port")
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        validation_alias=env("MAX_BODY_BYTES"),
        description="largest JSON body (413 beyond)",
    )
    enqueue_timeout_s: float = Field(
        1.0,
        gt=0,
        validation_alias=env("ENQUEUE_TIMEOUT_S"),
        description="how long a request waits for Redis after the ledger commit before leaving the job to the "
        "reconciler, in seconds",
    )
    shutdown_grace_s: float = Field(
        30.0,
        ge=0,
        validation_alias=env("SHUTDOWN_GRACE_S"),
        description="on SIGTERM, the seconds (may be fractional) the gateway gives in-flight requests to finish",
    )
    sse_heartbeat_s: float = Field(
        15.0,
        gt=0,
        validation_alias=env("SSE_HEARTBEAT_S"),
        description="heartbeat comment interval on event streams, in seconds (each beat also re-reads the ledger)",
    )
    alert_failed: int = Field(
        10,
        ge=0,
        validation_alias=env("QUEUE_ALERT_FAILED"),
        description="`GET /api/v1/queues/health` warns above this many failed jobs",
    )
    alert_queued: int = Field(
        50,
        ge=0,
        validation_alias=env("QUEUE_ALERT_QUEUED"),
        description="`GET /api/v1/queues/health` warns above this many queued jobs",
    )
    metrics_host: str = Field(
        "127.0.0.1", validation_alias=env("METRICS_HOST"), description="the bind address of the gateway's `/metrics`"
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        validation_alias=env("METRICS_PORT"),
        description="the gateway's `/metrics` on a listener of its own; unset: on the API port in development and "
        f"on {GATEWAY_METRICS_PORT} otherwise (the API port then answers 404)",
    )


class WorkerConfig(BaseSettings):
    """A worker process: concurrency, polling, leases, the reconciler and its `/health` + `/metrics`."""

    model_config = section_config("Workers")

    max_jobs: int = Field(
        50, ge=1, validation_alias=env("WORKER_MAX_JOBS"), description="concurrent jobs per worker process"
    )
    poll_delay_s: float = Field(
        0.05,
        gt=0,
        validation_alias=env("WORKER_POLL_DELAY_S"),
        description="how often an idle worker looks for due jobs when no wake-up came (delayed jobs, retries, lost "
        "signals), in seconds",
    )
    shutdown_grace_s: float = Field(
        30.0,
        ge=0,
        validation_alias=env("SHUTDOWN_GRACE_S"),
        description="on SIGTERM, the seconds a worker gives its running jobs to finish",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        validation_alias=env("WORKER_METRICS_HOST"),
        description="the bind address of each worker's `/health` + `/metrics`",
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        validation_alias=env("WORKER_METRICS_PORT"),
        description="each worker's `/health` + `/metrics` port; unset: the process's own (9101/9102/9103) when run "
        "alone, a free port per worker under `conveyor run` (set: N, N+1, … per worker); `0`: any free port",
    )
    reconcile_interval_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        validation_alias=env("RECONCILE_INTERVAL_S"),
        description="how often the scheduler compares the ledger with Redis, in seconds",
    )
    reconcile_grace_s: float = Field(
        10.0,
        ge=0,
        validation_alias=env("RECONCILE_GRACE_S"),
        description="a job must be untouched this long (seconds) before the reconciler looks at it",
    )
    reconcile_batch: int = Field(
        500,
        ge=1,
        le=10_000,
        validation_alias=env("RECONCILE_BATCH"),
        description="jobs per page as the reconciler walks every candidate",
    )
    lease_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        validation_alias=env("JOB_LEASE_S"),
        description="a running job's lease in seconds, renewed by its worker every third of it; another worker "
        "takes over a job whose lease lapsed",
    )
    cpu_workers: int = Field(
        1,
        ge=1,
        le=64,
        validation_alias=env("WORKER_CPU_PROCESSES"),
        description="processes in each worker's pool for CPU-heavy work (dataset analysis, reports); each runs one "
        "task at a time, and a cancelled or timed-out task's process is killed and replaced",
    )
    owner_share: float = Field(
        0.5,
        gt=0,
        le=1,
        validation_alias=env("OWNER_SHARE"),
        description="while other owners have due jobs on a queue, no owner starts jobs beyond this fraction of the "
        "queue's worker slots (every live worker's, at least one per owner); one owner alone may use every slot",
    )


class SmtpConfig(BaseSettings):
    """The SMTP server `email.send` delivers through (workers only: the gateway never sees the password)."""

    model_config = section_config("Mail server")

    host: str = Field(
        "127.0.0.1",
        validation_alias=env("SMTP_HOST"),
        description="mail server host; `conveyor run` starts a local mail catcher (writing `var/mail/*.eml`) when "
        "it is unset",
    )
    port: int = Field(8025, ge=1, le=65535, validation_alias=env("SMTP_PORT"), description="mail server port")
    username: str | None = Field(None, validation_alias=env("SMTP_USERNAME"), description="SMTP auth user")
    password: SecretStr | None = Field(None, validation_alias=env("SMTP_PASSWORD"), description="SMTP auth password")
    tls: Literal["none", "starttls", "tls"] = Field(
        "none", validation_alias=env("SMTP_TLS"), description="`none`, `starttls` or `tls`"
    )
    mail_from: str = Field(
        "Conveyor <conveyor@localhost>",
        validation_alias=env("MAIL_FROM"),
        description="sender; its domain also names Message-IDs",
    )
    timeout_s: float = Field(
        30.0, gt=0, validation_alias=env("SMTP_TIMEOUT_S"), description="every SMTP operation, in seconds"
    )
    templates_dir: Path | None = Field(
        None,
        validation_alias=env("EMAIL_TEMPLATES_DIR"),
        description="your email templates, searched before the built-in ones (a file of the same name wins)",
    )


class RunConfig(BaseSettings):
    """`conveyor run` only: how many processes it starts per queue (production scales by replicas instead)."""

    model_config = section_config("`conveyor run`")

    default_processes: int = Field(
        2,
        ge=1,
        le=MAX_PROCESSES_PER_QUEUE,
        validation_alias=env("WORKER_PROCESSES"),
        description="processes `conveyor run` starts for the `default` queue (`make run WORKERS=N`)",
    )
    heavy_processes: int = Field(
        1,
        ge=1,
        le=MAX_PROCESSES_PER_QUEUE,
        validation_alias=env("HEAVY_WORKER_PROCESSES"),
        description="processes `conveyor run` starts for the `heavy` queue (`make run HEAVY_WORKERS=N`)",
    )


class GatewaySettings(BaseSettings):
    """Everything the gateway process needs, and nothing it does not (no SMTP password)."""

    model_config = section_config("Process settings")

    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    postgres: PostgresConfig = Field(default_factory=PostgresConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    crypto: CryptoConfig = Field(default_factory=CryptoConfig)
    webhook: WebhookConfig = Field(default_factory=WebhookConfig)  # derives each owner's signing key
    storage: StorageConfig = Field(default_factory=StorageConfig)
    jobs: JobStoreConfig = Field(default_factory=JobStoreConfig)
    job_types: JobTypesConfig = Field(default_factory=JobTypesConfig)
    mail_policy: MailPolicyConfig = Field(default_factory=MailPolicyConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @model_validator(mode="before")
    @classmethod
    def _every_section_at_once(cls, data: Any) -> Any:
        return _build_sections(cls, data)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """Where /metrics has its own listener; None: on the API port (ENVIRONMENT=development without
        METRICS_PORT)."""
        port = self.gateway.metrics_port
        if port is None and self.auth.environment is Environment.DEVELOPMENT:
            return None
        return self.gateway.metrics_host, GATEWAY_METRICS_PORT if port is None else port

    @model_validator(mode="after")
    def _dev_secrets_on_loopback_only(self) -> Self:
        binds = [("API_HOST", self.gateway.host)]
        if (metrics := self.metrics_address) is not None:
            binds.append(("METRICS_HOST", metrics[0]))
        _refuse_exposed_dev_secrets(binds, jwt=self.auth.uses_dev_secret, key=self.crypto.uses_dev_key)
        return self


class WorkerSettings(BaseSettings):
    """Everything a worker process needs."""

    model_config = section_config("Process settings")

    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)  # the job caps every creation path counts
    redis: RedisConfig = Field(default_factory=RedisConfig)
    postgres: PostgresConfig = Field(default_factory=PostgresConfig)
    smtp: SmtpConfig = Field(default_factory=SmtpConfig)
    webhook: WebhookConfig = Field(default_factory=WebhookConfig)
    crypto: CryptoConfig = Field(default_factory=CryptoConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    jobs: JobStoreConfig = Field(default_factory=JobStoreConfig)
    job_types: JobTypesConfig = Field(default_factory=JobTypesConfig)
    mail_policy: MailPolicyConfig = Field(default_factory=MailPolicyConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @model_validator(mode="before")
    @classmethod
    def _every_section_at_once(cls, data: Any) -> Any:
        return _build_sections(cls, data)

    @model_validator(mode="after")
    def _dev_key_on_loopback_only(self) -> Self:
        _refuse_exposed_dev_secrets([("WORKER_METRICS_HOST", self.worker.metrics_host)], key=self.crypto.uses_dev_key)
        return self


def _build_sections(cls: type[BaseSettings], data: Any) -> Any:
    """Build each section the input leaves out from the environment, so that a start refused for several
    reasons (no JWT_SECRET and no ENCRYPTION_KEYS) names them all at once rather than one per attempt."""
    if not isinstance(data, dict):
        return data
    built, errors = dict(data), []
    for name, field in cls.model_fields.items():
        if name in data or field.default_factory is None:
            continue
        try:
            built[name] = field.default_factory()  # type: ignore[call-arg]
        except ValidationError as exc:
            errors += exc.errors(include_input=False, include_context=False)
    if errors:
        line_errors: list[Any] = [
            {"type": PydanticCustomError(e["type"], e["msg"]), "loc": e["loc"], "input": None} for e in errors
        ]
        raise ValidationError.from_exception_data(cls.__name__, line_errors)
    return built


def _exposed(binds: Iterable[tuple[str, str]]) -> str | None:
    """`API_HOST=0.0.0.0`: the first (variable, host) pair that is not loopback, for a refusal's message."""
    return next((f"{name}={host or '(all interfaces)'}" for name, host in binds if not is_loopback(host)), None)


def _refuse_exposed_dev_secrets(binds: list[tuple[str, str]], *, jwt: bool = False, key: bool = False) -> None:
    """The public dev secrets (already limited to explicit development) on a non-loopback bind: refused."""
    exposed = _exposed(binds)
    if exposed is None:
        return
    why = f"is accepted on loopback only, and {exposed} is not loopback"
    problems = [f"{JWT_HOWTO} (the public development secret {why})"] if jwt else []
    problems += [f"{KEYS_HOWTO} (the public development key {why})"] if key else []
    refuse(problems)


def describe_errors(exc: ValidationError, program: str) -> list[str]:
    """One line per invalid setting, for a terminal; input values are never echoed (they may be secrets)."""
    return [
        f"{program}: configuration error at {'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}"
        for err in exc.errors(include_input=False)
    ]
