"""docs/configuration.md is generated from the settings models: every variable, no secret value, up to date."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from devstack import configuration_doc
from shared.core import config, policy_config, settings
from shared.core.config import env, read_by, section_config

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"


def _every_section() -> list[type[BaseSettings]]:
    modules = (config, policy_config, settings)
    found = {v for m in modules for v in vars(m).values() if isinstance(v, type) and issubclass(v, BaseSettings)}
    processes = (BaseSettings, settings.GatewaySettings, settings.WorkerSettings)
    return [s for s in found if s not in processes]


def test_the_doc_is_the_generated_text() -> None:
    assert DOC.read_text(encoding="utf-8") == configuration_doc.render(), (
        f"docs/configuration.md differs from the settings models: run {configuration_doc.REGENERATE}"
    )


def test_every_variable_has_a_row() -> None:
    doc = configuration_doc.render()
    names = {configuration_doc.variable(f) for s in _every_section() for f in s.model_fields.values()}

    assert len(names) > 50
    assert sorted(n for n in names if f"\n| `{n}` |" not in doc) == []
    assert {s for s, _ in configuration_doc.sections()} == set(_every_section()), "every section is in a process"


def test_no_secret_value_is_shown() -> None:
    doc = configuration_doc.render()
    secrets = [
        f.default.get_secret_value()
        for s in _every_section()
        for f in s.model_fields.values()
        if isinstance(f.default, SecretStr)
    ]

    assert settings.DEV_JWT_SECRET in secrets
    assert [s for s in secrets if s in doc] == []
    assert "| `JWT_SECRET` | *(secret)*: a public development value, *development only* | gateway |" in doc
    assert "| `ENCRYPTION_KEYS` | unset: a public development key, *development only* | both |" in doc


def test_read_by_names_the_processes() -> None:
    doc = configuration_doc.render()

    assert "| `SMTP_PASSWORD` | unset | workers |" in doc, "the gateway never reads the SMTP section"
    assert "| `RATE_LIMIT_PER_MINUTE` | `600` | gateway |" in doc
    assert "| `REDIS_JOBS_URL` | `redis://127.0.0.1:6379/1` | both |" in doc
    assert "| `WORKER_PROCESSES` | `2` | `conveyor run` |" in doc
    assert doc.count("| `ENVIRONMENT` |") == doc.count("| `SHUTDOWN_GRACE_S` |") == 1, "one row per variable"


class _Undocumented(BaseSettings):
    """A section with a field nobody described."""

    model_config = section_config("Undocumented")

    knob: int = Field(1, validation_alias=env("SOME_KNOB"))


class _Misattributed(BaseSettings):
    """A section only the gateway reads, with a field said to be the workers'."""

    model_config = section_config("Misattributed")

    knob: int = Field(1, validation_alias=env("SOME_KNOB"), description="a knob", json_schema_extra=read_by("workers"))


@pytest.mark.parametrize(
    ("section", "problem"), [(_Undocumented, "has no description="), (_Misattributed, "read_by='workers'")]
)
def test_a_field_must_say_what_it_does_and_who_reads_it(section: type[BaseSettings], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        configuration_doc.render([(section, ["gateway"])])


def test_the_command_writes_the_doc(tmp_path: Path) -> None:
    target = tmp_path / "configuration.md"

    assert configuration_doc.main([str(target)]) == 0
    assert target.read_text(encoding="utf-8") == configuration_doc.render()


def test_the_example_environment_names_documented_variables_only() -> None:
    example = (DOC.parents[1] / "deploy" / "example.env").read_text(encoding="utf-8")
    named = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", example, re.MULTILINE))
    documented = {configuration_doc.variable(f) for s in _every_section() for f in s.model_fields.values()}

    assert len(named) > 10
    assert sorted(named - documented) == []
