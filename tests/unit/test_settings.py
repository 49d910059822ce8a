"""Settings: the documented env names, the public dev secrets only in explicit development on loopback, secrets
stay hidden."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import SecretStr, ValidationError

from shared.core.settings import (
    DEV_JWT_SECRET,
    AuthConfig,
    Environment,
    GatewaySettings,
    LogConfig,
    RedisConfig,
    RunConfig,
    SmtpConfig,
    StorageConfig,
    WorkerSettings,
)
from shared.jobtypes.email_policy import RecipientPolicy
from workers.families.email.links import LinkPolicy


def test_env_names_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "development")
    monkeypatch.setenv("REDIS_JOBS_URL", "redis://jobs.internal:6379/1")
    monkeypatch.setenv("SMTP_TLS", "starttls")
    monkeypatch.setenv("API_PORT", "9000")

    assert RedisConfig().jobs_url == "redis://jobs.internal:6379/1"
    assert SmtpConfig().tls == "starttls"
    assert GatewaySettings().gateway.port == 9000


def test_shutdown_grace_is_one_float_for_the_gateway_and_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "development")
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
    with pytest.raises(ValidationError, match="JWT_SECRET: set it to 32"):
        AuthConfig(environment="production", jwt_secret=SecretStr(DEV_JWT_SECRET))


def test_production_accepts_a_real_secret() -> None:
    config = AuthConfig(environment="production", jwt_secret=SecretStr("x" * 40))

    assert config.jwt_secret.get_secret_value() == "x" * 40


def test_short_jwt_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 32"):
        AuthConfig(jwt_secret=SecretStr("short"))


def test_secrets_do_not_show_in_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "development")
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


def test_configuration_errors_never_echo_the_value() -> None:
    from shared.core.settings import describe_errors

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

    with pytest.raises(ValidationError, match="JWT_SECRET: set it to 32"):
        GatewaySettings()


@pytest.mark.parametrize("settings", [GatewaySettings, WorkerSettings])
def test_production_without_encryption_keys_fails(
    production: pytest.MonkeyPatch, settings: type[GatewaySettings | WorkerSettings]
) -> None:
    production.setenv("JWT_SECRET", PRODUCTION_JWT)

    with pytest.raises(ValidationError, match="ENCRYPTION_KEYS: set it to a Fernet key"):
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
        (["-m", "gateway"], {}, "JWT_SECRET: set it to 32"),
        (["-m", "gateway"], {"JWT_SECRET": PRODUCTION_JWT}, "ENCRYPTION_KEYS: set it to a Fernet key"),
        (["-m", "workers", "default"], {"JWT_SECRET": PRODUCTION_JWT}, "ENCRYPTION_KEYS: set it to a Fernet key"),
        (["-m", "devstack.cli", "run"], {}, "JWT_SECRET: set it to 32"),
        (["-m", "devstack.cli", "token", "--sub", "alice"], {}, "JWT_SECRET: set it to 32"),
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


# The public dev secrets: accepted only with ENVIRONMENT=development set explicitly, on loopback binds only.

TEST_KEY = "q3J0fQ0xr3yqgH5wN0pW9o7b1c2d3e4f5g6h7i8j9k0="
JWT_ADVICE = (
    "JWT_SECRET: set it to 32+ random characters, e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))'"
)
KEYS_ADVICE = (
    "ENCRYPTION_KEYS: set it to a Fernet key, "
    "e.g. python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)
BIND_VARS = ("API_HOST", "METRICS_HOST", "METRICS_PORT", "WORKER_METRICS_HOST")


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment with no ENVIRONMENT, no secrets and default binds."""
    for name in (*SECRET_VARS, *BIND_VARS, "ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def _messages(settings: type[GatewaySettings | WorkerSettings]) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        settings()
    return [e["msg"] for e in caught.value.errors()]


def test_an_unset_environment_is_not_development_for_the_dev_secrets(bare: pytest.MonkeyPatch) -> None:
    gateway = _messages(GatewaySettings)

    assert [m.split(" (")[0] for m in gateway] == [JWT_ADVICE, KEYS_ADVICE], "both at once, each with its recipe"
    assert "ENVIRONMENT=development" in gateway[0]
    assert [m.split(" (")[0] for m in _messages(WorkerSettings)] == [KEYS_ADVICE]


def test_an_unset_environment_is_production_for_every_relaxation(bare: pytest.MonkeyPatch) -> None:
    """A pip or systemd deployment with real secrets on a public bind that never sets ENVIRONMENT: no
    `system.echo`, users mail nobody, links only over https to listed hosts, /metrics off the API port."""
    for name in ("SYSTEM_ECHO_ENABLED", "MAIL_ALLOWED_RECIPIENTS", "MAIL_LINK_HOSTS"):
        bare.delenv(name, raising=False)
        bare.delenv(name.lower(), raising=False)
    bare.setenv("JWT_SECRET", PRODUCTION_JWT)
    bare.setenv("ENCRYPTION_KEYS", TEST_KEY)
    bare.setenv("API_HOST", "0.0.0.0")  # noqa: S104 - the bind under test

    gateway, worker = GatewaySettings(), WorkerSettings()
    links = LinkPolicy.from_settings(worker.mail_policy, None)

    assert {s.environment for s in (gateway.auth, gateway.crypto, gateway.job_types, gateway.mail_policy)} == {
        Environment.PRODUCTION
    }
    assert {s.environment for s in (worker.crypto, worker.job_types, worker.mail_policy)} == {Environment.PRODUCTION}
    assert not gateway.job_types.echo_enabled
    assert not worker.job_types.echo_enabled
    assert not RecipientPolicy.for_role(gateway.mail_policy, admin=False).allows("ann@example.com")
    assert RecipientPolicy.for_role(gateway.mail_policy, admin=True).allows("ann@example.com")
    assert (links.allow_http, links.any_host, links.hosts) == (False, False, frozenset())
    assert gateway.metrics_address == ("127.0.0.1", 9100), "/metrics on a loopback listener of its own"


@pytest.mark.parametrize("environment", ["test", "production"])
def test_only_development_accepts_the_dev_secrets(bare: pytest.MonkeyPatch, environment: str) -> None:
    bare.setenv("ENVIRONMENT", environment)

    assert [m.split(" (")[0] for m in _messages(GatewaySettings)] == [JWT_ADVICE, KEYS_ADVICE]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_explicit_development_on_loopback_accepts_the_dev_secrets(bare: pytest.MonkeyPatch, host: str) -> None:
    bare.setenv("ENVIRONMENT", "development")
    bare.setenv("API_HOST", host)
    bare.setenv("WORKER_METRICS_HOST", host)

    assert GatewaySettings().auth.jwt_secret.get_secret_value() == DEV_JWT_SECRET
    assert GatewaySettings().metrics_address is None, "development: /metrics on the API port"
    assert WorkerSettings().crypto.keys is None


@pytest.mark.parametrize(
    ("env", "exposed"),
    [
        ({"API_HOST": "0.0.0.0"}, "API_HOST=0.0.0.0"),  # noqa: S104 - the bind under test
        ({"API_HOST": "::"}, "API_HOST=::"),
        ({"API_HOST": "jobs.example.com"}, "API_HOST=jobs.example.com"),
        ({"API_HOST": ""}, "API_HOST=(all interfaces)"),
        ({"METRICS_PORT": "9100", "METRICS_HOST": "0.0.0.0"}, "METRICS_HOST=0.0.0.0"),  # noqa: S104
    ],
)
def test_development_bound_beyond_loopback_refuses_the_dev_secrets(
    bare: pytest.MonkeyPatch, env: dict[str, str], exposed: str
) -> None:
    bare.setenv("ENVIRONMENT", "development")
    for name, value in env.items():
        bare.setenv(name, value)

    messages = _messages(GatewaySettings)

    assert [m.split(" (")[0] for m in messages] == [JWT_ADVICE, KEYS_ADVICE]
    assert all(f"{exposed} is not loopback" in m for m in messages)


def test_development_with_real_secrets_may_bind_anywhere(bare: pytest.MonkeyPatch) -> None:
    bare.setenv("ENVIRONMENT", "development")
    bare.setenv("API_HOST", "0.0.0.0")  # noqa: S104 - the bind under test
    bare.setenv("JWT_SECRET", PRODUCTION_JWT)
    bare.setenv("ENCRYPTION_KEYS", TEST_KEY)

    assert GatewaySettings().gateway.host == "0.0.0.0"  # noqa: S104


def test_a_worker_with_metrics_beyond_loopback_refuses_the_dev_key(bare: pytest.MonkeyPatch) -> None:
    bare.setenv("ENVIRONMENT", "development")
    bare.setenv("WORKER_METRICS_HOST", "0.0.0.0")  # noqa: S104 - the bind under test

    messages = _messages(WorkerSettings)

    assert [m.split(" (")[0] for m in messages] == [KEYS_ADVICE]
    assert "WORKER_METRICS_HOST=0.0.0.0 is not loopback" in messages[0]
    bare.setenv("ENCRYPTION_KEYS", TEST_KEY)
    assert WorkerSettings().worker.metrics_host == "0.0.0.0"  # noqa: S104


def test_metrics_have_their_own_listener_outside_development(bare: pytest.MonkeyPatch) -> None:
    bare.setenv("JWT_SECRET", PRODUCTION_JWT)
    bare.setenv("ENCRYPTION_KEYS", TEST_KEY)
    bare.setenv("ENVIRONMENT", "production")
    assert GatewaySettings().metrics_address == ("127.0.0.1", 9100)
    bare.setenv("METRICS_PORT", "9200")
    assert GatewaySettings().metrics_address == ("127.0.0.1", 9200)
    bare.setenv("ENVIRONMENT", "development")
    assert GatewaySettings().metrics_address == ("127.0.0.1", 9200), "METRICS_PORT asks for one in development too"


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["-m", "gateway"], {}, [JWT_ADVICE, KEYS_ADVICE]),
        (["-m", "gateway"], {"ENVIRONMENT": "development", "API_HOST": "0.0.0.0"}, [JWT_ADVICE, KEYS_ADVICE]),  # noqa: S104
        (["-m", "workers", "default"], {}, [KEYS_ADVICE]),
        (["-m", "workers", "default"], {"ENVIRONMENT": "development", "WORKER_METRICS_HOST": "::"}, [KEYS_ADVICE]),
    ],
)
def test_a_refused_start_names_each_variable_and_how_to_make_it(
    argv: list[str], env: dict[str, str], expected: list[str]
) -> None:
    scrubbed = {k: v for k, v in os.environ.items() if k.upper() not in BIND_VARS}
    clean = {k: v for k, v in scrubbed.items() if k.upper() not in SECRET_VARS and k.upper() != "ENVIRONMENT"}
    done = subprocess.run(
        [sys.executable, *argv], env={**clean, **env}, capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    program = argv[1]
    assert [line.split(" (")[0] for line in lines] == [
        f"{program}: configuration error at settings: {e}" for e in expected
    ]
    assert "Traceback" not in done.stderr
    assert DEV_JWT_SECRET not in done.stderr + done.stdout


def test_the_image_defaults_to_production() -> None:
    """`docker run conveyor python -m gateway` with nothing else set refuses to start, naming what to set."""
    from pathlib import Path

    dockerfile = (Path(__file__).parents[2] / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    image_env = dict(
        item.split("=", 1)
        for line in dockerfile.splitlines()
        if line.startswith("ENV ")
        for item in line.removeprefix("ENV ").split()
    )
    assert image_env.get("ENVIRONMENT") == "production"
    clean = {k: v for k, v in os.environ.items() if k.upper() not in (*SECRET_VARS, *BIND_VARS, "ENVIRONMENT")}

    done = subprocess.run(
        [sys.executable, "-m", "gateway"], env={**clean, **image_env}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip

    assert done.returncode == 2
    assert JWT_ADVICE in done.stderr
    assert KEYS_ADVICE in done.stderr
