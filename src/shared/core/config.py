"""How every configuration section is built, and the sections of connections and secrets (both processes).

Each section is a pydantic-settings model read from the environment: each field names its variable and says
what it does (`description`), which docs/configuration.md is generated from. `read_by` narrows a field of a
section both processes read to the one that uses it; `development_default` describes a public default that
only local development accepts. shared.core.settings composes the sections into each process's settings.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

# A working default for local use, and public: accepted only by an explicit ENVIRONMENT=development process
# bound to loopback (see AuthConfig and the process settings in shared.core.settings); the dev encryption key likewise.
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


def section_config(title: str) -> SettingsConfigDict:
    """Every section's model config; `title` heads its part of docs/configuration.md."""
    return SettingsConfigDict(title=title, frozen=True, extra="ignore", populate_by_name=True, case_sensitive=False)


def env(name: str) -> AliasChoices:
    """The variable `name` (any case) as a field's validation alias."""
    return AliasChoices(name, name.lower())


def read_by(process: Literal["gateway", "workers"]) -> dict[str, Any]:
    """A field of a section both processes read that only `process` uses (docs/configuration.md says so)."""
    return {"read_by": process}


def development_default(what: str) -> dict[str, Any]:
    """A public default accepted only in explicit development on loopback; `what` names it in the docs."""
    return {"development_default": what}


def is_loopback(host: str) -> bool:
    """Whether a server bound to `host` is reachable from this machine only (`localhost`, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything


def refuse(problems: Iterable[str]) -> None:
    """Raise one ValidationError with a line per problem (each names the variable to set), if there are any."""
    errors: list[Any] = [{"type": PydanticCustomError("unsafe_default", p), "loc": (), "input": None} for p in problems]
    if errors:
        raise ValidationError.from_exception_data("settings", errors)


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


def environment_field() -> Any:
    """Every section's ENVIRONMENT: `production` unless set, so a deployment that forgets it gets no
    development relaxation (dev secrets, `system.echo`, mail to anyone, /metrics on the API port).
    `conveyor run` sets `development` for itself and its children when it is unset."""
    return Field(
        Environment.PRODUCTION,
        validation_alias=env("ENVIRONMENT"),
        description="`development`, `test` or `production`. The public development `JWT_SECRET` and encryption key "
        "are accepted only under `development` with every listener on loopback; otherwise the process refuses to "
        "start, naming each variable to set and how to make it. Only `development` turns on `system.echo`, mail to "
        "anyone, mail links over http to any host and `/metrics` on the API port. `conveyor run` and "
        "`conveyor token` use `development` when it is unset",
    )


class RedisConfig(BaseSettings):
    """Two Redis databases: db 0 holds disposable data, db 1 the job queues and results."""

    model_config = section_config("Redis")

    cache_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=env("REDIS_CACHE_URL"),
        description="disposable data: progress, rate limits (db 0); `conveyor run` starts an embedded Redis when unset",
    )
    jobs_url: str = Field(
        "redis://127.0.0.1:6379/1",
        validation_alias=env("REDIS_JOBS_URL"),
        description="arq queues and results (db 1); `conveyor run` starts an embedded Redis when unset",
    )
    connect_timeout_s: float = Field(
        2.0,
        gt=0,
        validation_alias=env("REDIS_CONNECT_TIMEOUT_S"),
        description="connect timeout in seconds (the socket timeout is twice that)",
    )


class PostgresConfig(BaseSettings):
    """The PostgreSQL ledger."""

    model_config = section_config("PostgreSQL")

    url: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/conveyor"),
        validation_alias=env("DATABASE_URL"),
        description="the ledger's database (default: `conveyor` on the local server, as `postgres`); "
        "`conveyor run` starts an embedded PostgreSQL when unset",
    )
    pool_min: int = Field(
        1, ge=0, validation_alias=env("DATABASE_POOL_MIN"), description="smallest asyncpg pool per process"
    )
    pool_max: int = Field(
        10, ge=1, validation_alias=env("DATABASE_POOL_MAX"), description="largest asyncpg pool per process"
    )
    connect_timeout_s: float = Field(
        5.0, gt=0, validation_alias=env("DATABASE_CONNECT_TIMEOUT_S"), description="connect timeout in seconds"
    )


class LogConfig(BaseSettings):
    """What the processes log, and how."""

    model_config = section_config("Logs")

    format: Literal["json", "console"] = Field(
        "json",
        validation_alias=env("LOG_FORMAT"),
        description="`json` or `console`; `conveyor` commands in a terminal use `console` when it is unset",
    )
    level: str = Field("INFO", validation_alias=env("LOG_LEVEL"), description="root log level")

    def for_terminal(self, interactive: bool) -> LogConfig:
        """This config, with `console` instead of the default `json` when `interactive` (stderr is a TTY).

        An explicit LOG_FORMAT always wins; only the local tooling asks (a service's logs stay JSON by default).
        """
        if not interactive or "format" in self.model_fields_set:
            return self
        return self.model_copy(update={"format": "console"})


class AuthConfig(BaseSettings):
    """Bearer tokens (HS256 JWTs), and the ENVIRONMENT every section reads."""

    model_config = section_config("Authentication")

    environment: Environment = environment_field()
    jwt_secret: SecretStr = Field(
        SecretStr(DEV_JWT_SECRET),
        validation_alias=env("JWT_SECRET"),
        description="HS256 token signing key, at least 32 characters",
        json_schema_extra=development_default("a public development value"),
    )
    jwt_issuer: str | None = Field(None, validation_alias=env("JWT_ISSUER"), description="`iss` checked when set")
    jwt_audience: str | None = Field(None, validation_alias=env("JWT_AUDIENCE"), description="`aud` checked when set")
    jwt_leeway_s: float = Field(
        30.0, ge=0, validation_alias=env("JWT_LEEWAY_S"), description="clock skew tolerated on `exp`, in seconds"
    )
    # A token whose `exp` lies further than this past its `iat` (or past now, without `iat`) is refused.
    jwt_max_lifetime_s: float = Field(
        86400.0,
        gt=0,
        validation_alias=env("JWT_MAX_LIFETIME_S"),
        description="a JWT valid for longer (from `iat`, or now without one, to `exp`) is refused with 401; "
        "`conveyor token --ttl` cannot exceed it",
    )

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
            refuse([f"{JWT_HOWTO} (the built-in development secret is public: {_DEV_ONLY} it)"])
        if len(self.jwt_secret.get_secret_value()) < 32:
            raise ValueError("JWT_SECRET must be at least 32 characters (HS256 wants a 256-bit key)")
        return self


class CryptoConfig(BaseSettings):
    """Keys for payload fields a job type marks secret (encrypted at rest in Redis and PostgreSQL)."""

    model_config = section_config("Encryption")

    environment: Environment = environment_field()
    # Comma-separated Fernet keys, newest first: the first encrypts, every one decrypts (rotation).
    keys: SecretStr | None = Field(
        None,
        validation_alias=env("ENCRYPTION_KEYS"),
        description="comma-separated Fernet keys, newest first, for payload fields marked secret: the first "
        "encrypts, every one decrypts (rotation)",
        json_schema_extra=development_default("a public development key"),
    )

    @property
    def uses_dev_key(self) -> bool:
        """No ENCRYPTION_KEYS: shared.infra.sealing falls back to its public development key."""
        return self.keys is None

    @model_validator(mode="after")
    def _dev_key_in_development_only(self) -> Self:
        if self.uses_dev_key and self.environment is not Environment.DEVELOPMENT:
            refuse([f"{KEYS_HOWTO} (without it, the public development key is used: {_DEV_ONLY} it)"])
        return self
