"""Job handlers, one module per family; a module's `HANDLERS` list is found on its own.

Each module binds handlers to specs from `shared.jobtypes` with `workers.runtime.bind`; nothing else
needs to know about it. See docs/add-a-job-type.md.
"""

from __future__ import annotations

import importlib
import pkgutil

from workers.runtime import AnyHandler, BoundHandler


def builtin_handlers() -> dict[str, AnyHandler]:
    """Every handler listed in a `HANDLERS` of a module of this package, by job type name."""
    by_name: dict[str, AnyHandler] = {}
    for info in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
        module = importlib.import_module(info.name)
        for handler in getattr(module, "HANDLERS", ()):
            if not isinstance(handler, BoundHandler):
                raise TypeError(f"{info.name}.HANDLERS holds {handler!r}, not a bound handler")
            if handler.spec.name in by_name:
                raise ValueError(f"job type {handler.spec.name!r} has two handlers")
            by_name[handler.spec.name] = handler
    return by_name
