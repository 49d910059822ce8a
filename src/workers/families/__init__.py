"""Job handlers, one folder per family; a family's `HANDLERS` list (in `handler.py`) is found on its own.

A family is a package holding its `handler` module and everything only it uses, or a single module (as
docs/add-a-job-type.md writes one). Each binds handlers to specs from `shared.jobtypes` with
`workers.runtime.bind`; nothing else needs to know about it.
"""

from __future__ import annotations

import importlib
import pkgutil

from workers.runtime import AnyHandler, BoundHandler


def builtin_handlers() -> dict[str, AnyHandler]:
    """Every handler listed in a `HANDLERS` of a module of this package, by job type name."""
    by_name: dict[str, AnyHandler] = {}
    for info in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
        module = importlib.import_module(f"{info.name}.handler" if info.ispkg else info.name)
        for handler in getattr(module, "HANDLERS", ()):
            if not isinstance(handler, BoundHandler):
                raise TypeError(f"{module.__name__}.HANDLERS holds {handler!r}, not a bound handler")
            if handler.spec.name in by_name:
                raise ValueError(f"job type {handler.spec.name!r} has two handlers")
            by_name[handler.spec.name] = handler
    return by_name
