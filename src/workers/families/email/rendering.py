"""Mail bodies from Jinja2 templates: `<name>.txt` and/or `<name>.html`, the user's folder before the built-ins.

Templates come from operators, but `context` comes from whoever submits the job, so rendering is
sandboxed and strict: a missing variable is an error rather than an empty string in a sent mail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

BUILTIN_PACKAGE = "workers.families.email"
BUILTIN_FOLDER = "templates"


class TemplateProblem(Exception):
    """A template is missing (`kind="TemplateNotFound"`) or cannot be rendered (`kind="TemplateError"`)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class RenderedMail:
    subject: str
    text: str | None
    html: str | None


@lru_cache(maxsize=8)
def environment(user_dir: Path | None) -> SandboxedEnvironment:
    """One environment per process (and folder): Jinja2 caches compiled templates in it.

    HTML templates are autoescaped; text templates and the subject are not (they are not markup).
    """
    loaders: list[jinja2.BaseLoader] = []
    if user_dir is not None:
        loaders.append(jinja2.FileSystemLoader(user_dir))
    loaders.append(jinja2.PackageLoader(BUILTIN_PACKAGE, BUILTIN_FOLDER))
    return SandboxedEnvironment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
        undefined=jinja2.StrictUndefined,
    )


def _load(env: SandboxedEnvironment, filename: str) -> jinja2.Template | None:
    try:
        return env.get_template(filename)
    except jinja2.TemplateNotFound as exc:
        if exc.name != filename:  # the template exists but includes one that does not
            raise
        return None


# The subject comes from the request, so it is not a template (a loop in it could spin the worker's event
# loop for hours): only `{{ name }}` placeholders are filled in from `context`.
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def _subject(subject: str, context: dict[str, Any]) -> str:
    def value(match: re.Match[str]) -> str:
        if match[1] not in context:
            raise TemplateProblem("TemplateError", f"the subject uses `{match[1]}`, which `context` does not give")
        return str(context[match[1]])

    return _PLACEHOLDER.sub(value, subject).strip()


def render(user_dir: Path | None, name: str, subject: str, context: dict[str, Any]) -> RenderedMail:
    """Render `<name>.txt`, `<name>.html` (at least one must exist) and the subject with `context`.

    Raises:
        TemplateProblem: no such template, a syntax error, an undefined variable, a sandbox violation,
            or a subject that renders to more than one line.
    """
    env = environment(user_dir)
    try:
        text_t, html_t = _load(env, f"{name}.txt"), _load(env, f"{name}.html")
        if text_t is None and html_t is None:
            raise TemplateProblem("TemplateNotFound", f"no template {name!r} ({name}.txt or {name}.html)")
        rendered = RenderedMail(
            subject=_subject(subject, context),
            text=text_t.render(context) if text_t is not None else None,
            html=html_t.render(context) if html_t is not None else None,
        )
    except jinja2.TemplateNotFound as exc:
        raise TemplateProblem("TemplateNotFound", f"template {name!r} includes a missing template: {exc}") from exc
    except jinja2.TemplateError as exc:  # syntax errors, undefined variables, sandbox violations
        raise TemplateProblem("TemplateError", f"template {name!r}: {exc}") from exc
    if rendered.subject.splitlines() != [rendered.subject]:  # empty, or a break of any kind (\u2028 too)
        raise TemplateProblem("TemplateError", "the subject must render to a single, non-empty line")
    return rendered
