"""Every job type Conveyor knows, one module each; a module that defines a `JobSpec` is found on its own.

Adding a type means adding a module here (models + spec) and one in `workers.families` (the handler):
nothing else is touched. See docs/add-a-job-type.md.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from shared.jobs import AnySpec, JobSpec, Registry


@cache
def builtin_specs() -> tuple[AnySpec, ...]:
    """Every `JobSpec` defined at the top level of a module of this package, by name."""
    found: list[AnySpec] = []
    for info in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
        module = importlib.import_module(info.name)
        found += [v for v in vars(module).values() if isinstance(v, JobSpec)]
    return tuple(sorted({id(s): s for s in found}.values(), key=lambda s: s.name))


def builtin_registry() -> Registry:
    return Registry(builtin_specs())
