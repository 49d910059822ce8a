"""Settings: env names from API.md, production refuses the dev secret, secrets stay hidden."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import SecretStr, ValidationError

from shared.settings import (
    DEV_JWT_SECRET,
    AuthConfig,
    GatewaySettings,
    LogConfig,
    RedisConfig,
    RunConfig,
    SmtpConfig,
    StorageConfig,
    WorkerSettings,
)


def test_env_names_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_JOBS_URL", "redis://jobs.internal:6379/1")
    monkeypatch.setenv("SMTP_TLS", "starttls")
    monkeypatch.setenv("API_PORT", "9000")

    assert RedisConfig().jobs_url == "redis://jobs.internal:6379/1"
    assert SmtpConfig().tls == "starttls"
    assert GatewaySettings().gateway.port == 9000


def test_shutdown_grace_is_one_float_for_the_gateway_and_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHUTDOWN_GRACE_S", "2.5")

    assert GatewaySettings().gateway.shutdown_grace_s == 2.5
    assert WorkerSettings().worker.shutdown_grace_s == 2.5


@pytest.mark.parametrize(
    ("env", "interactive", "expected"),
    [(None, True, "console"), (None, False, "json"), ("json", True, "json"), ("console", False, "console")],
)
def test_log_format_is_console_in_a_terminal_unless_log_format_says(
    monkeypatch: pytest.MonkeyPatch, env: str | None, interactive: bool, expected: str
) -> None:
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    monkeypatch.delenv("log_format", raising=False)
    if env is not None:
        monkeypatch.setenv("LOG_FORMAT", env)

    assert LogConfig().for_terminal(interactive).format == expected
    assert LogConfig().format == (env or "json"), "the processes themselves keep JSON unless told"


def test_conveyor_run_processes_per_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (RunConfig().default_processes, RunConfig().heavy_processes) == (2, 1)
    monkeypatch.setenv("WORKER_PROCESSES", "3")
    assert RunConfig().default_processes == 3
    monkeypatch.setenv("WORKER_PROCESSES", "0")
    with pytest.raises(ValidationError):
        RunConfig()


def test_production_refuses_the_dev_jwt_secret() -> None:
    with pytest.raises(ValidationError, match="ENVIRONMENT=production"):
        AuthConfig(environment="production", jwt_secret=SecretStr(DEV_JWT_SECRET))


def test_production_accepts_a_real_secret() -> None:
    config = AuthConfig(environment="production", jwt_secret=SecretStr("x" * 40))

    assert config.jwt_secret.get_secret_value() == "x" * 40


def test_short_jwt_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 32"):
        AuthConfig(jwt_secret=SecretStr("short"))


def test_secrets_do_not_show_in_reprs() -> None:
    settings = WorkerSettings(smtp=SmtpConfig(password=SecretStr("hunter2-smtp")))

    assert "hunter2-smtp" not in repr(settings)
    assert "hunter2-smtp" not in str(settings.model_dump())


def test_gateway_settings_hold_no_smtp_section() -> None:
    assert "smtp" not in GatewaySettings.model_fields


@pytest.mark.parametrize(
    "url", ["https://jobs.example.com/?next=x", "https://jobs.example.com/#top", "https://u:p@jobs.example.com"]
)
def test_public_url_must_be_a_plain_base(url: str) -> None:
    with pytest.raises(ValidationError, match="PUBLIC_URL must be a base URL"):
        StorageConfig(public_url=url)
    assert str(StorageConfig(public_url="https://jobs.example.com/conveyor").public_url).endswith("/conveyor")


def test_readme_documents_every_setting() -> None:
    from pathlib import Path

    from pydantic_settings import BaseSettings

    from shared import settings as s

    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    sections = [v for v in vars(s).values() if isinstance(v, type) and issubclass(v, BaseSettings)]
    names = [
        choice
        for section in sections
        for field in section.model_fields.values()
        for choice in getattr(field.validation_alias, "choices", [])[:1]
    ]

    assert len(names) > 20
    missing = [name for name in names if f"`{name}`" not in readme]
    assert missing == []


def test_configuration_errors_never_echo_the_value() -> None:
    from shared.settings import describe_errors

    with pytest.raises(ValidationError) as caught:
        AuthConfig(jwt_secret=SecretStr("too-short-but-secret"))

    lines = describe_errors(caught.value, "gateway")
    assert len(lines) == 1
    assert lines[0].startswith("gateway: configuration error at settings: ")
    assert "JWT_SECRET must be at least 32 characters" in lines[0]
    assert "too-short-but-secret" not in "".join(lines)


# ENVIRONMENT=production refuses the development defaults, from the environment as the processes read it.

PRODUCTION_JWT = "prod-jwt-" + "9d8c7b6a5f4e3d2c1b0a" * 2
SECRET_VARS = ("JWT_SECRET", "ENCRYPTION_KEYS", "SMTP_PASSWORD", "WEBHOOK_SECRET", "DATABASE_URL")


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("ENVIRONMENT", "production")
    for name in SECRET_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def test_production_gateway_without_jwt_secret_fails(production: pytest.MonkeyPatch) -> None:
    production.setenv("ENCRYPTION_KEYS", "q3J0fQ0xr3yqgH5wN0pW9o7b1c2d3e4f5g6h7i8j9k0=")

    with pytest.raises(ValidationError, match="JWT_SECRET must be set"):
        GatewaySettings()


@pytest.mark.parametrize("settings", [GatewaySettings, WorkerSettings])
def test_production_without_encryption_keys_fails(
    production: pytest.MonkeyPatch, settings: type[GatewaySettings | WorkerSettings]
) -> None:
    production.setenv("JWT_SECRET", PRODUCTION_JWT)

    with pytest.raises(ValidationError, match="ENCRYPTION_KEYS must be set"):
        settings()


def test_production_with_real_secrets_starts(production: pytest.MonkeyPatch) -> None:
    production.setenv("JWT_SECRET", PRODUCTION_JWT)
    production.setenv("ENCRYPTION_KEYS", "q3J0fQ0xr3yqgH5wN0pW9o7b1c2d3e4f5g6h7i8j9k0=")

    assert GatewaySettings().auth.environment == "production"
    assert WorkerSettings().crypto.keys is not None


def _run(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k.upper() not in SECRET_VARS and k.upper() != "ENVIRONMENT"}
    return subprocess.run(
        [sys.executable, *argv], env={**clean, **env}, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["-m", "gateway"], {}, "JWT_SECRET must be set"),
        (["-m", "gateway"], {"JWT_SECRET": PRODUCTION_JWT}, "ENCRYPTION_KEYS must be set"),
        (["-m", "workers", "default"], {"JWT_SECRET": PRODUCTION_JWT}, "ENCRYPTION_KEYS must be set"),
        (["-m", "shared.cli", "run"], {}, "JWT_SECRET must be set"),
        (["-m", "shared.cli", "token", "--sub", "alice"], {}, "JWT_SECRET must be set"),
    ],
)
def test_entry_points_refuse_to_start_in_production_with_dev_defaults(
    argv: list[str], env: dict[str, str], expected: str
) -> None:
    done = _run(*argv, env={"ENVIRONMENT": "production", **env})

    assert done.returncode == 2
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert PRODUCTION_JWT not in done.stderr + done.stdout
    assert DEV_JWT_SECRET not in done.stderr + done.stdout
