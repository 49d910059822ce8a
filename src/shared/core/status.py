"""The one vocabulary of a job's status, and its groups: every module and the API spell them from here.

queued -> running -> succeeded | failed | cancelled, with scheduled (due later) and retrying (waiting for its
next attempt) before running. The ledger stores these strings; the API shows them as they are.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

JobStatus = Literal["queued", "scheduled", "running", "retrying", "succeeded", "failed", "cancelled"]
Finished = Literal["succeeded", "failed", "cancelled"]
Waiting = Literal["queued", "scheduled", "retrying"]

STATUSES: Final[tuple[JobStatus, ...]] = get_args(JobStatus)
FINISHED: Final[tuple[Finished, ...]] = get_args(Finished)
# A job that may still start: every waiting one, and a running one (whose attempt may still fail and retry).
UNFINISHED: Final[tuple[JobStatus, ...]] = tuple(s for s in STATUSES if s not in FINISHED)
WAITING: Final[tuple[Waiting, ...]] = get_args(Waiting)
