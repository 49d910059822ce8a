"""docs/configuration.md, generated from the settings models: `python -m devstack.configuration_doc` (`make docs`).

Each section of the process settings becomes a table; each field a row: its variable, its default (a secret's
is never shown), which process reads it and its `description`. A variable several sections read (ENVIRONMENT,
SHUTDOWN_GRACE_S) is one row, in the first of them.
"""

from __future__ import annotations

import enum
import inspect
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from shared.core.settings import GatewaySettings, RunConfig, WorkerSettings

DOC_PATH: Final = Path("docs/configuration.md")
REGENERATE: Final = "make docs (python -m devstack.configuration_doc)"
# Who reads a section: each process's settings, and the sections only the local supervisor reads.
PROCESSES: Final[tuple[tuple[str, type[BaseSettings]], ...]] = (
    ("gateway", GatewaySettings),
    ("workers", WorkerSettings),
)
LOCAL_ONLY: Final[tuple[tuple[str, type[BaseSettings]], ...]] = (("`conveyor run`", RunConfig),)

INTRO: Final = """# Configuration

<!-- Generated from the settings models in src/shared/core/ by `make docs`: edit their descriptions, not this file. -->

Every setting is an environment variable (its name in any case), read once when a process starts. Each
process reads only the sections it needs: the gateway never sees the SMTP password. An invalid value stops
the process before it serves anything, with one line per setting that names the variable and never echoes
the value.

**Read by** says which process uses a variable: `gateway` (`python -m gateway`), `workers`
(`python -m workers default|heavy|scheduler`), `both`, or `conveyor run` (the local supervisor, which passes
its environment on to the processes it starts, after pointing it at the servers it embeds). `conveyor token`
reads the authentication section, `conveyor migrate` the PostgreSQL one.

**Defaults** marked *(secret)* are never shown. One marked *development only* is public: a process accepts it
only under `ENVIRONMENT=development` with every listener on loopback, and otherwise refuses to start, naming
the variable to set and how to make its value.
"""


@dataclass
class Row:
    """One variable of the table."""

    name: str
    default: str
    readers: list[str]
    descriptions: list[str]

    def merge(self, readers: Iterable[str], description: str) -> None:
        """Another section reads the same variable: one row says both."""
        self.readers += [reader for reader in readers if reader not in self.readers]
        if description not in self.descriptions:
            self.descriptions.append(description)

    def markdown(self) -> str:
        readers = "both" if set(self.readers) == {"gateway", "workers"} else ", ".join(self.readers)
        cells = (f"`{self.name}`", self.default, readers, "; ".join(self.descriptions))
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _section_readers() -> dict[type[BaseSettings], list[str]]:
    """Every section, in the order the processes compose them, and the processes that read it."""
    readers: dict[type[BaseSettings], list[str]] = {}
    for process, settings in PROCESSES:
        for field in settings.model_fields.values():
            section = field.annotation
            if isinstance(section, type) and issubclass(section, BaseSettings):
                readers.setdefault(section, []).append(process)
    for process, section in LOCAL_ONLY:
        readers.setdefault(section, []).append(process)
    return readers


def sections() -> list[tuple[type[BaseSettings], list[str]]]:
    """The sections one process reads first (gateway, then workers, then local), then those both read."""
    found = list(_section_readers().items())
    return sorted(found, key=lambda item: (len(item[1]) > 1, found.index(item)))


def variable(field: FieldInfo) -> str:
    """The environment variable a field reads (its first alias choice)."""
    alias = field.validation_alias
    if not isinstance(alias, AliasChoices) or not isinstance(alias.choices[0], str):
        raise ValueError(f"a settings field without a variable name: {field!r}")
    return alias.choices[0]


def _extra(field: FieldInfo, key: str) -> Any:
    extra = field.json_schema_extra
    return extra.get(key) if isinstance(extra, dict) else None


def _is_secret(field: FieldInfo) -> bool:
    return "SecretStr" in str(field.annotation) or isinstance(field.default, SecretStr)


def _plain(value: object, name: str) -> str:
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, int) and name.endswith("_BYTES") and value % 1024 == 0:
        units = ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB"))
        size = next(f"{value // unit} {label}" for unit, label in units if value % unit == 0)
        return f"`{value}` ({size})"
    return f"`{value}`"


def default(field: FieldInfo, name: str) -> str:
    """A field's default as the table shows it: a secret's value never, a development-only one said so."""
    shown = "*(secret)*" if _is_secret(field) and field.default is not None else _plain(field.default, name)
    development = _extra(field, "development_default")
    return f"{shown}: {development}, *development only*" if development else shown


def _readers(field: FieldInfo, section: type[BaseSettings], readers: list[str]) -> list[str]:
    only = _extra(field, "read_by")
    if only is None:
        return readers
    if only not in readers:
        raise ValueError(f"{section.__name__}: read_by={only!r}, but only {readers} read the section")
    return [only]


def rows(section: type[BaseSettings], readers: list[str], seen: dict[str, Row]) -> list[Row]:
    """The rows a section adds to the document; a variable already in `seen` merges into its row instead."""
    new: list[Row] = []
    for name, field in section.model_fields.items():
        if not field.description:
            raise ValueError(f"{section.__name__}.{name} has no description= (docs/configuration.md shows it)")
        var, who = variable(field), _readers(field, section, readers)
        if var in seen:
            seen[var].merge(who, field.description)
            continue
        seen[var] = row = Row(var, default(field, var), list(who), [field.description])
        new.append(row)
    return new


def render(layout: Sequence[tuple[type[BaseSettings], list[str]]] | None = None) -> str:
    """The whole of docs/configuration.md."""
    seen: dict[str, Row] = {}
    tables = [(section, rows(section, readers, seen)) for section, readers in layout or sections()]
    parts = [INTRO]
    for section, section_rows in tables:
        title = section.model_config.get("title") or section.__name__
        parts.append(f"## {title}\n\n{inspect.cleandoc(section.__doc__ or '')}\n")
        lines = ["| variable | default | read by | what it does |", "|---|---|---|---|"]
        parts.append("\n".join(lines + [row.markdown() for row in section_rows]) + "\n")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the document (to `argv[0]`, default docs/configuration.md under the current directory)."""
    args = list(sys.argv[1:] if argv is None else argv)
    path = Path(args[0]) if args else DOC_PATH
    path.write_text(render(), encoding="utf-8")
    print(f"wrote {path}")  # noqa: T201 - the command's output
    return 0


if __name__ == "__main__":
    sys.exit(main())
