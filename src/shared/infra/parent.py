"""A child of `conveyor run` follows its parent: it receives a stop signal when the parent dies (Linux only)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from typing import Final

_PR_SET_PDEATHSIG: Final = 1
PARENT_PID_ENV: Final = "CONVEYOR_PARENT_PID"  # see follow_parent()


def follow_parent(sig: signal.Signals = signal.SIGTERM) -> int | None:
    """At start-up of a child of `conveyor run`: receive `sig` once the parent dies, even by SIGKILL (Linux only).

    The parent names itself in PARENT_PID_ENV (removed here, so it does not reach our own children). If that
    process is no longer our parent, it died before we got here: `sig` is delivered at once. Done by the
    child itself, so the parent needs no `preexec_fn` (unsafe in a process with threads). Returns the
    parent's pid (for `parent_gone`); without the variable (not started by `conveyor run`), None.

    The kernel sends `sig` each time the child is handed to another thread of the dying parent, then to
    init: a parent with threads sends several copies. Count only the first (see `parent_gone`).
    """
    parent = os.environ.pop(PARENT_PID_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return None
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != int(parent):
        os.kill(os.getpid(), sig)
    return int(parent)


def parent_gone(parent: int | None) -> bool:
    """True once the parent `follow_parent` returned has died: a stop signal now is a copy of its death signal."""
    return parent is not None and os.getppid() != parent


def die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A `preexec_fn` that has the child receive `sig` when this process dies, even by SIGKILL (Linux only).

    Spawn from the main thread: the kernel ties the signal to the thread that forked, not to the process.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec
