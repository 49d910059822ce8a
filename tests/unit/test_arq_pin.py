"""A tripwire for arq upgrades: the worker replaces two of arq's methods and relies on arq internals.

`workers.priority_worker.PriorityWorker` replaces `Worker.start_jobs` (the claim through the queue's pause gate) and
`Worker._poll_iteration` (the read of due ids by priority), and `workers.processes` uses arq's private state
(`job_counter`, `sem`, `tasks`, `allow_pick_jobs`, the burst switches, `_cancel_aborted_jobs`). The claim script
(`shared.infra.claim`) reads a job's owner from the head of arq's job record, so the record's layout is pinned
too. A new arq that changes any of these must be read before it is taken: this test names what changed.
"""

from __future__ import annotations

import hashlib
import inspect
from importlib.metadata import version

from arq import jobs
from arq.worker import Worker

# sha256 (first 16 hex digits) of the source of each arq 0.28.0 method the worker replaces or depends on.
PINNED = {
    "__init__": "edfb0cd7e05e77cf",  # where job_counter, sem, tasks and the burst switches are set up
    "start_jobs": "b45797cfa40bed7f",  # replaced: its checks are repeated in shared.infra.claim's Lua
    "_poll_iteration": "f8d39d823a0a59f2",  # replaced: only the read of due ids differs
    "_release_sem_dec_counter_on_complete": "0ed101482e942c33",
    "_cancel_aborted_jobs": "54575eaf8682f95b",  # called during the shutdown grace period
    "async_run": "f3434c3dd359b31b",
    "main": "45ca1591c9717466",  # the zero-job burst that ends a graceful stop
}


def test_arq_is_the_pinned_release() -> None:
    assert version("arq") == "0.28.0"


def test_the_arq_methods_the_worker_replaces_or_relies_on_are_unchanged() -> None:
    changed = {
        name: digest
        for name, pinned in PINNED.items()
        if (digest := hashlib.sha256(inspect.getsource(getattr(Worker, name)).encode()).hexdigest()[:16]) != pinned
    }
    assert not changed, f"arq changed {sorted(changed)}: compare with workers/priority_worker.py, then update PINNED"


def test_the_job_record_keeps_its_arguments_near_its_head() -> None:
    # {'t': job_try, 'f': function, 'a': args, ...}: the envelope (owner first) starts within a few bytes.
    digest = hashlib.sha256(inspect.getsource(jobs.serialize_job).encode()).hexdigest()[:16]
    assert digest == "1fc854cc50e16e5c", "arq changed serialize_job: compare with shared.infra.claim's owner_of"
