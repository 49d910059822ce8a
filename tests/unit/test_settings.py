"""Settings: env names from API.md, production refuses the dev secret, secrets stay hidden."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from shared.settings import DEV_JWT_SECRET, AuthConfig, GatewaySettings, RedisConfig, SmtpConfig, WorkerSettings


def test_env_names_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_JOBS_URL", "redis://jobs.internal:6379/1")
    monkeypatch.setenv("SMTP_TLS", "starttls")
    monkeypatch.setenv("API_PORT", "9000")

    assert RedisConfig().jobs_url == "redis://jobs.internal:6379/1"
    assert SmtpConfig().tls == "starttls"
    assert GatewaySettings().gateway.port == 9000


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


def test_readme_documents_every_setting() -> None:
    from pathlib import Path

    from shared import settings as s

    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    sections = (s.GatewayConfig, s.WorkerConfig, s.RedisConfig, s.PostgresConfig, s.AuthConfig, s.SmtpConfig)
    names = [
        choice
        for section in (*sections, s.JobStoreConfig, s.LogConfig)
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
