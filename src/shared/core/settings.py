"""pydantic-settings models: one section per concern; each process composes only the sections it needs."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import AliasChoices, Field, HttpUrl, SecretStr, ValidationError, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

# A working default for local use, and public: accepted only by an explicit ENVIRONMENT=development process
# bound to loopback (see AuthConfig and the process settings below); the dev encryption key likewise.
DEV_JWT_SECRET = "conveyor-dev-only-jwt-secret-change-me-in-production"  # noqa: S105 - documented dev default, refused outside local development

# What a refused start tells the operator to set, and how to make the value.
JWT_HOWTO = (
    "JWT_SECRET: set it to 32+ random characters, e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))'"
)
KEYS_HOWTO = (
    "ENCRYPTION_KEYS: set it to a Fernet key, "
    "e.g. python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)
_DEV_ONLY = "only a process started with ENVIRONMENT=development and bound to loopback accepts"


MAX_PROCESSES_PER_QUEUE = 32  # `conveyor run`: worker processes per queue
GATEWAY_METRICS_PORT = 9100  # the gateway's /metrics listener outside development, unless METRICS_PORT says


def _config() -> SettingsConfigDict:
    return SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True, case_sensitive=False)


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


def is_loopback(host: str) -> bool:
    """Whether a server bound to `host` is reachable from this machine only (`localhost`, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything


def _refuse(problems: Iterable[str]) -> None:
    """Raise one ValidationError with a line per problem (each names the variable to set), if there are any."""
    errors: list[Any] = [{"type": PydanticCustomError("unsafe_default", p), "loc": (), "input": None} for p in problems]
    if errors:
        raise ValidationError.from_exception_data("settings", errors)


def _exposed(binds: Iterable[tuple[str, str]]) -> str | None:
    """`API_HOST=0.0.0.0`: the first (variable, host) pair that is not loopback, for a refusal's message."""
    return next((f"{name}={host or '(all interfaces)'}" for name, host in binds if not is_loopback(host)), None)


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


def _environment() -> Any:
    """Every section's ENVIRONMENT: `production` unless set, so a deployment that forgets it gets no
    development relaxation (dev secrets, `system.echo`, mail to anyone, /metrics on the API port).
    `conveyor run` sets `development` for itself and its children when it is unset."""
    return Field(Environment.PRODUCTION, validation_alias=_env("ENVIRONMENT"))


class RedisConfig(BaseSettings):
    model_config = _config()

    cache_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=_env("REDIS_CACHE_URL"))
    jobs_url: str = Field("redis://127.0.0.1:6379/1", validation_alias=_env("REDIS_JOBS_URL"))
    connect_timeout_s: float = Field(2.0, gt=0, validation_alias=_env("REDIS_CONNECT_TIMEOUT_S"))


class PostgresConfig(BaseSettings):
    model_config = _config()

    url: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/conveyor"), validation_alias=_env("DATABASE_URL")
    )
    pool_min: int = Field(1, ge=0, validation_alias=_env("DATABASE_POOL_MIN"))
    pool_max: int = Field(10, ge=1, validation_alias=_env("DATABASE_POOL_MAX"))
    connect_timeout_s: float = Field(5.0, gt=0, validation_alias=_env("DATABASE_CONNECT_TIMEOUT_S"))


class LogConfig(BaseSettings):
    model_config = _config()

    format: Literal["json", "console"] = Field("json", validation_alias=_env("LOG_FORMAT"))
    level: str = Field("INFO", validation_alias=_env("LOG_LEVEL"))

    def for_terminal(self, interactive: bool) -> LogConfig:
        """This config, with `console` instead of the default `json` when `interactive` (stderr is a TTY).

        An explicit LOG_FORMAT always wins; only the local tooling asks (a service's logs stay JSON by default).
        """
        if not interactive or "format" in self.model_fields_set:
            return self
        return self.model_copy(update={"format": "console"})


class AuthConfig(BaseSettings):
    model_config = _config()

    environment: Environment = _environment()
    jwt_secret: SecretStr = Field(SecretStr(DEV_JWT_SECRET), validation_alias=_env("JWT_SECRET"))
    jwt_issuer: str | None = Field(None, validation_alias=_env("JWT_ISSUER"))
    jwt_audience: str | None = Field(None, validation_alias=_env("JWT_AUDIENCE"))
    jwt_leeway_s: float = Field(30.0, ge=0, validation_alias=_env("JWT_LEEWAY_S"))
    # A token whose `exp` lies further than this past its `iat` (or past now, without `iat`) is refused.
    jwt_max_lifetime_s: float = Field(86400.0, gt=0, validation_alias=_env("JWT_MAX_LIFETIME_S"))

    @property
    def explicit_development(self) -> bool:
        """ENVIRONMENT=development (never a default): the one case the public dev secrets may be used."""
        return self.environment is Environment.DEVELOPMENT

    @property
    def uses_dev_secret(self) -> bool:
        return self.jwt_secret.get_secret_value() == DEV_JWT_SECRET

    @model_validator(mode="after")
    def _dev_secret_in_development_only(self) -> Self:
        if self.uses_dev_secret and not self.explicit_development:
            _refuse([f"{JWT_HOWTO} (the built-in development secret is public: {_DEV_ONLY} it)"])
        if len(self.jwt_secret.get_secret_value()) < 32:
            raise ValueError("JWT_SECRET must be at least 32 characters (HS256 wants a 256-bit key)")
        return self


class SmtpConfig(BaseSettings):
    model_config = _config()

    host: str = Field("127.0.0.1", validation_alias=_env("SMTP_HOST"))
    port: int = Field(8025, ge=1, le=65535, validation_alias=_env("SMTP_PORT"))
    username: str | None = Field(None, validation_alias=_env("SMTP_USERNAME"))
    password: SecretStr | None = Field(None, validation_alias=_env("SMTP_PASSWORD"))
    tls: Literal["none", "starttls", "tls"] = Field("none", validation_alias=_env("SMTP_TLS"))
    mail_from: str = Field("Conveyor <conveyor@localhost>", validation_alias=_env("MAIL_FROM"))
    timeout_s: float = Field(30.0, gt=0, validation_alias=_env("SMTP_TIMEOUT_S"))
    # Searched before the built-in templates, so a user's file of the same name wins.
    templates_dir: Path | None = Field(None, validation_alias=_env("EMAIL_TEMPLATES_DIR"))


class StorageConfig(BaseSettings):
    """Uploads and artifacts on disk (shared by the gateway and workers: one volume in production)."""

    model_config = _config()

    dir: Path = Field(Path("var/storage"), validation_alias=_env("STORAGE_DIR"))
    max_upload_bytes: int = Field(1024**3, ge=1, validation_alias=_env("MAX_UPLOAD_BYTES"))
    quota_bytes: int = Field(10 * 1024**3, ge=1, validation_alias=_env("STORAGE_QUOTA_BYTES"))
    # Where clients reach the gateway (e.g. https://jobs.example.com): makes links in mail absolute.
    public_url: HttpUrl | None = Field(None, validation_alias=_env("PUBLIC_URL"))

    @model_validator(mode="after")
    def _public_url_is_a_base(self) -> Self:
        url = self.public_url
        if url is not None and (url.query or url.fragment or url.username or url.password):
            raise ValueError("PUBLIC_URL must be a base URL: scheme, host and path only")
        return self


class WebhookConfig(BaseSettings):
    model_config = _config()

    secret: SecretStr | None = Field(None, validation_alias=_env("WEBHOOK_SECRET"))
    allow_private: bool = Field(False, validation_alias=_env("WEBHOOK_ALLOW_PRIVATE"))
    timeout_s: float = Field(10.0, gt=0, le=300, validation_alias=_env("WEBHOOK_TIMEOUT_S"))
    breaker_failures: int = Field(5, ge=1, validation_alias=_env("WEBHOOK_BREAKER_FAILURES"))
    breaker_open_s: float = Field(30.0, gt=0, validation_alias=_env("WEBHOOK_BREAKER_OPEN_S"))


class SecurityConfig(BaseSettings):
    """Rate limits and caps on what one principal may hold (gateway)."""

    model_config = _config()

    rate_limit_per_minute: int = Field(600, ge=1, validation_alias=_env("RATE_LIMIT_PER_MINUTE"))
    auth_failures_per_minute: int = Field(30, ge=1, validation_alias=_env("AUTH_FAILURES_PER_MINUTE"))
    max_queued_per_owner: int = Field(10_000, ge=1, validation_alias=_env("MAX_QUEUED_PER_OWNER"))
    sse_per_principal: int = Field(20, ge=1, validation_alias=_env("SSE_MAX_PER_PRINCIPAL"))
    trust_forwarded_for: bool = Field(False, validation_alias=_env("TRUST_X_FORWARDED_FOR"))
    # How many proxies of yours append to X-Forwarded-For: the client is that many entries from the right.
    forwarded_for_hops: int = Field(1, ge=1, le=10, validation_alias=_env("FORWARDED_FOR_HOPS"))
    max_schedules_per_owner: int = Field(100, ge=1, validation_alias=_env("MAX_SCHEDULES_PER_OWNER"))


class JobTypesConfig(BaseSettings):
    """Which optional job types this deployment offers (read by both sides, so both agree)."""

    model_config = _config()

    environment: Environment = _environment()
    # `system.echo` (sleeps, fails on demand: a test tool). None: on in development only.
    system_echo: bool | None = Field(None, validation_alias=_env("SYSTEM_ECHO_ENABLED"))

    @property
    def echo_enabled(self) -> bool:
        return self.environment is Environment.DEVELOPMENT if self.system_echo is None else self.system_echo


class MailPolicyConfig(BaseSettings):
    """Who `email.send` may write to, how often, and which links its templates may carry (both sides)."""

    model_config = _config()

    environment: Environment = _environment()
    # Comma-separated domains (`example.com`) and addresses (`ops@example.org`) a `user` may send to;
    # admins are unrestricted. Empty: anywhere in development, nowhere otherwise.
    allowed_recipients: str = Field("", validation_alias=_env("MAIL_ALLOWED_RECIPIENTS"))
    per_owner_per_hour: int = Field(200, ge=1, validation_alias=_env("MAIL_PER_OWNER_PER_HOUR"))
    # Comma-separated hosts a template's links may point to, beside PUBLIC_URL's own.
    link_hosts: str = Field("", validation_alias=_env("MAIL_LINK_HOSTS"))


class CryptoConfig(BaseSettings):
    """Keys for payload fields a job type marks secret (encrypted at rest in Redis and PostgreSQL)."""

    model_config = _config()

    environment: Environment = _environment()
    # Comma-separated Fernet keys, newest first: the first encrypts, every one decrypts (rotation).
    keys: SecretStr | None = Field(None, validation_alias=_env("ENCRYPTION_KEYS"))

    @property
    def uses_dev_key(self) -> bool:
        """No ENCRYPTION_KEYS: shared.infra.sealing falls back to its public development key."""
        return self.keys is None

    @model_validator(mode="after")
    def _dev_key_in_development_only(self) -> Self:
        if self.uses_dev_key and self.environment is not Environment.DEVELOPMENT:
            _refuse([f"{KEYS_HOWTO} (without it, the public development key is used: {_DEV_ONLY} it)"])
        return self


class JobStoreConfig(BaseSettings):
    """How long results (Redis) and finished jobs (ledger) are kept; read by both sides."""

    model_config = _config()

    result_ttl_s: int = Field(86400, ge=1, validation_alias=_env("RESULT_TTL_S"))
    # A result larger than this (JSON bytes) fails its job with ResultTooLarge instead of being stored.
    result_max_bytes: int = Field(256 * 1024, ge=1024, validation_alias=_env("RESULT_MAX_BYTES"))
    retention_days: float = Field(7, gt=0, validation_alias=_env("RETENTION_DAYS"))


class GatewayConfig(BaseSettings):
    model_config = _config()

    host: str = Field("127.0.0.1", validation_alias=_env("API_HOST"))
    port: int = Field(8080, ge=0, le=65535, validation_alias=_env("API_PORT"))
    max_body_bytes: int = Field(1024 * 1024, ge=1024, validation_alias=_env("MAX_BODY_BYTES"))
    enqueue_timeout_s: float = Field(1.0, gt=0, validation_alias=_env("ENQUEUE_TIMEOUT_S"))
    shutdown_grace_s: float = Field(30.0, ge=0, validation_alias=_env("SHUTDOWN_GRACE_S"))
    sse_heartbeat_s: float = Field(15.0, gt=0, validation_alias=_env("SSE_HEARTBEAT_S"))
    alert_failed: int = Field(10, ge=0, validation_alias=_env("QUEUE_ALERT_FAILED"))
    alert_queued: int = Field(50, ge=0, validation_alias=_env("QUEUE_ALERT_QUEUED"))
    # /metrics on its own listener: None serves it on the API port in development and on 9100 otherwise.
    metrics_host: str = Field("127.0.0.1", validation_alias=_env("METRICS_HOST"))
    metrics_port: int | None = Field(None, ge=0, le=65535, validation_alias=_env("METRICS_PORT"))


class WorkerConfig(BaseSettings):
    model_config = _config()

    max_jobs: int = Field(50, ge=1, validation_alias=_env("WORKER_MAX_JOBS"))
    poll_delay_s: float = Field(0.05, gt=0, validation_alias=_env("WORKER_POLL_DELAY_S"))
    shutdown_grace_s: float = Field(30.0, ge=0, validation_alias=_env("SHUTDOWN_GRACE_S"))
    metrics_host: str = Field("127.0.0.1", validation_alias=_env("WORKER_METRICS_HOST"))
    # None: the process's own default port (see workers.processes); 0: any free port.
    metrics_port: int | None = Field(None, ge=0, le=65535, validation_alias=_env("WORKER_METRICS_PORT"))
    reconcile_interval_s: float = Field(5.0, gt=0, le=3600, validation_alias=_env("RECONCILE_INTERVAL_S"))
    reconcile_grace_s: float = Field(10.0, ge=0, validation_alias=_env("RECONCILE_GRACE_S"))
    reconcile_batch: int = Field(500, ge=1, le=10_000, validation_alias=_env("RECONCILE_BATCH"))
    lease_s: float = Field(30.0, ge=1, le=3600, validation_alias=_env("JOB_LEASE_S"))
    cpu_workers: int = Field(1, ge=1, le=64, validation_alias=_env("WORKER_CPU_PROCESSES"))
    # While other owners have due jobs on a queue, no owner holds more than this fraction of its slots.
    owner_share: float = Field(0.5, gt=0, le=1, validation_alias=_env("OWNER_SHARE"))


class RunConfig(BaseSettings):
    """`conveyor run` only: how many processes it starts per queue (production scales by replicas instead)."""

    model_config = _config()

    default_processes: int = Field(2, ge=1, le=MAX_PROCESSES_PER_QUEUE, validation_alias=_env("WORKER_PROCESSES"))
    heavy_processes: int = Field(1, ge=1, le=MAX_PROCESSES_PER_QUEUE, validation_alias=_env("HEAVY_WORKER_PROCESSES"))


class GatewaySettings(BaseSettings):
    """Everything the gateway process needs, and nothing it does not (no SMTP password)."""

    model_config = _config()

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

    model_config = _config()

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


def _refuse_exposed_dev_secrets(binds: list[tuple[str, str]], *, jwt: bool = False, key: bool = False) -> None:
    """The public dev secrets (already limited to explicit development) on a non-loopback bind: refused."""
    exposed = _exposed(binds)
    if exposed is None:
        return
    why = f"is accepted on loopback only, and {exposed} is not loopback"
    problems = [f"{JWT_HOWTO} (the public development secret {why})"] if jwt else []
    problems += [f"{KEYS_HOWTO} (the public development key {why})"] if key else []
    _refuse(problems)


def describe_errors(exc: ValidationError, program: str) -> list[str]:
    """One line per invalid setting, for a terminal; input values are never echoed (they may be secrets)."""
    return [
        f"{program}: configuration error at {'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}"
        for err in exc.errors(include_input=False)
    ]
