"""Every job type Conveyor knows, one module each; a module that defines a `JobSpec` is found on its own.

Adding a type means adding a module here (models + spec) and one in `workers.families` (the handler):
nothing else is touched. See docs/add-a-job-type.md.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from shared.core.settings import JobTypesConfig
from shared.jobtypes.spec import AnySpec, JobSpec, Registry


@cache
def builtin_specs() -> tuple[AnySpec, ...]:
    """Every `JobSpec` defined at the top level of a module of this package, by name."""
    found: list[AnySpec] = []
    for info in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
        module = importlib.import_module(info.name)
        found += [v for v in vars(module).values() if isinstance(v, JobSpec)]
    return tuple(sorted({id(s): s for s in found}.values(), key=lambda s: s.name))


def offered(name: str, job_types: JobTypesConfig) -> bool:
    """Whether this deployment offers the type: every one does, but `system.echo` (a sleep-and-fail test
    tool) only where SYSTEM_ECHO_ENABLED (by default, ENVIRONMENT=development) says so."""
    return name != "system.echo" or job_types.echo_enabled


def builtin_registry(job_types: JobTypesConfig | None = None) -> Registry:
    """The built-in types this deployment offers (see `offered`): a type left out is unknown to the API
    (refused, not listed, not documented) and to the scheduler.

    Give the process's `settings.job_types`; without it they are read from the environment, as the
    process's settings are.
    """
    config = JobTypesConfig() if job_types is None else job_types
    return Registry(spec for spec in builtin_specs() if offered(spec.name, config))
