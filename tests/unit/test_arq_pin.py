"""A tripwire for arq upgrades: every arq member `workers.arq_seam` replaces, calls or reads is pinned.

The list is read from the seam's own code: each method of `ArqWorker` that arq's `Worker` also defines (an
override), each `Worker` member it reaches through `self` that is not one of arq's documented parameters
(or is one that it switches), and `RELIED_ON`. Each has the digest of its arq 0.28.0 source below; a new
override or a new read without a digest fails, and so does an installed arq whose source differs, naming
each member and what to re-read. An instance attribute is pinned by `Worker.__init__`, where arq sets it up.
The claim script (`shared.infra.claim`) reads a job's owner from the head of arq's job record, so the
record's layout is pinned too; and nothing outside the seam may import `arq.worker` or touch what it pins.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import re
import textwrap
from collections import defaultdict
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path

import arq
from arq import constants, jobs
from arq.worker import Worker

from workers import arq_seam
from workers.arq_seam import ArqWorker

# sha256 (first 16 hex digits) of the source of each arq 0.28.0 member the seam depends on.
PINNED = {
    "__init__": "edfb0cd7e05e77cf",
    "_cancel_aborted_jobs": "54575eaf8682f95b",
    "_jobs_started": "c5643370c110c7cd",
    "_poll_iteration": "f8d39d823a0a59f2",
    "_release_sem_dec_counter_on_complete": "0ed101482e942c33",
    "async_run": "f3434c3dd359b31b",
    "finish_failed_job": "3e16087f318a7acf",
    "finish_job": "903f09c92830d3fd",
    "heart_beat": "2e9959bea66dc551",
    "main": "45ca1591c9717466",
    "pool": "d6b9a7d2d5280e7f",
    "run_job": "589a19059ff84ee7",
    "start_jobs": "b45797cfa40bed7f",
}

SRC = Path(arq_seam.__file__).resolve().parents[1]
SEAM = Path(arq_seam.__file__).resolve()


def _digest(name: str) -> str:
    member = vars(Worker)[name]
    target = member.fget if isinstance(member, property) else member
    assert target is not None, name
    return hashlib.sha256(inspect.getsource(target).encode()).hexdigest()[:16]


def _instance_attributes() -> set[str]:
    """What arq's `Worker.__init__` sets on `self`."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(Worker.__init__)))
    return {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and _on_self(n) and isinstance(n.ctx, ast.Store)
    }


def _documented() -> set[str]:
    """arq's documented constructor parameters (`:param name:` in `Worker`'s docstring)."""
    return set(re.findall(r":param (\w+):", Worker.__doc__ or ""))


def _on_self(node: ast.Attribute) -> bool:
    return isinstance(node.value, ast.Name) and node.value.id == "self"


def _seam_uses() -> tuple[dict[str, set[str]], set[str]]:
    """Each arq `Worker` member the seam's `ArqWorker` reaches through `self` (with the methods that do), and
    the ones it assigns."""
    tree = ast.parse(SEAM.read_text())
    seam = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == ArqWorker.__name__)
    arq_names = set(vars(Worker)) | _instance_attributes()
    used: dict[str, set[str]] = defaultdict(set)
    assigned: set[str] = set()
    for method in (n for n in seam.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
        for node in ast.walk(method):
            if isinstance(node, ast.Attribute) and _on_self(node) and node.attr in arq_names:
                used[node.attr].add(method.name)
                if isinstance(node.ctx, ast.Store):
                    assigned.add(node.attr)
    return used, assigned


def _overrides() -> list[str]:
    """The methods (and properties) of `ArqWorker` that arq's `Worker` defines too."""
    own = vars(ArqWorker)
    return sorted(n for n in own if n in vars(Worker) and (inspect.isfunction(own[n]) or isinstance(own[n], property)))


def _private() -> set[str]:
    """The arq members the seam uses beyond reading its documented parameters."""
    used, assigned = _seam_uses()
    return (set(used) - (_documented() - assigned)) | {"_queue_read_offset"}


def _required() -> dict[str, str]:
    """Each arq member to pin, with what to re-read when it changes."""
    used, assigned = _seam_uses()
    public = _documented() - assigned  # documented parameters the seam only reads
    required: dict[str, str] = {}
    attributes: set[str] = set()
    for name, methods in sorted(used.items()):
        if name in public:
            continue
        if name in vars(Worker):
            required[name] = f"read by ArqWorker.{', ArqWorker.'.join(sorted(methods))}: re-read them"
        else:
            attributes.add(name)
    if attributes:
        required["__init__"] = (
            f"sets up {', '.join(sorted(attributes))}, which ArqWorker reads or switches: re-read each use"
        )
    for name in _overrides():
        replaced = f"replaced by ArqWorker.{name}: port what changed into workers/arq_seam.py"
        required[name] = f"{replaced}; it {required[name]}" if name in required else replaced
    for name, why in arq_seam.RELIED_ON.items():
        required.setdefault(name, why)
    return required


def test_arq_is_the_pinned_release() -> None:
    assert version("arq") == "0.28.0"


def test_every_arq_member_the_seam_depends_on_has_a_digest() -> None:
    required = _required()
    missing = {name: _digest(name) for name in sorted(set(required) - set(PINNED))}
    assert not missing, f"workers/arq_seam.py now depends on arq's {missing} (installed digests): read, then pin"
    stale = sorted(set(PINNED) - set(required))
    assert not stale, f"workers/arq_seam.py no longer depends on arq's {stale}: take them out of PINNED"


def test_the_arq_members_the_seam_depends_on_are_unchanged() -> None:
    required = _required()
    changed = [
        f"Worker.{name} ({why})"
        for name, why in sorted(required.items())
        if name in PINNED and _digest(name) != PINNED[name]
    ]
    assert not changed, (
        f"arq {version('arq')} changed, compared with 0.28.0: " + "; ".join(changed) + ". Then update PINNED."
    )


def test_the_derivation_sees_the_overrides_and_the_switches() -> None:
    assert {"__init__", "_poll_iteration", "run_job", "_cancel_aborted_jobs", "finish_job"} <= set(_required())
    assert {"allow_pick_jobs", "burst", "max_burst_jobs", "job_counter", "sem", "tasks", "job_tasks"} <= _private()


def test_arq_never_moves_its_queue_read_offset() -> None:
    # The seam reads from the head of the queue, as arq does while this offset stays the 0 that __init__ sets.
    writes = [
        ast.unparse(node)
        for path in Path(arq.__file__).parent.glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign)
        and "_queue_read_offset" in ast.unparse(node.targets[0] if isinstance(node, ast.Assign) else node.target)
    ]
    assert writes == ["self._queue_read_offset = 0"], (
        f"arq moves its read offset now ({writes}): see workers/arq_seam.py"
    )


def _modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        if path.resolve() != SEAM:
            yield path, ast.parse(path.read_text())


def test_only_the_seam_imports_arq_worker() -> None:
    importers = [
        str(path.relative_to(SRC))
        for path, tree in _modules()
        for node in ast.walk(tree)
        if (isinstance(node, ast.ImportFrom) and node.module == "arq.worker")
        or (isinstance(node, ast.Import) and any(a.name == "arq.worker" for a in node.names))
    ]
    assert not importers, f"{importers} import arq.worker: go through workers.arq_seam"


def _holds_a_worker(tree: ast.Module) -> bool:
    """The module imports the seam or a worker built on it."""
    seams = {"workers.arq_seam", "workers.priority_worker"}
    return any(isinstance(node, ast.ImportFrom) and node.module in seams for node in ast.walk(tree))


def test_no_other_module_touches_what_the_seam_pins() -> None:
    # arq's underscored names nowhere; its other internals (tasks, sem, loop, ...) not where a worker is held.
    private = _private()
    offenders: dict[str, list[str]] = {}
    for path, tree in _modules():
        watched = private if _holds_a_worker(tree) else {n for n in private if n.startswith("_")}
        names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr in watched}
        if names:
            offenders[str(path.relative_to(SRC))] = sorted(names)
    assert not offenders, f"arq's internals outside workers/arq_seam.py: {offenders}"


def test_the_job_record_keeps_its_arguments_near_its_head() -> None:
    # {'t': job_try, 'f': function, 'a': args, ...}: the envelope (owner first) starts within a few bytes.
    digest = hashlib.sha256(inspect.getsource(jobs.serialize_job).encode()).hexdigest()[:16]
    assert digest == "1fc854cc50e16e5c", "arq changed serialize_job: compare with shared.infra.claim's owner_of"


# The records the seam reads and writes for arq: a job's (deserialize_job_raw), its result (serialize_result, as
# arq's Job.result() and Job.status() read it back, by arq's key names).
RECORDS: dict[str, tuple[Callable[..., object], str]] = {
    "serialize_result": (jobs.serialize_result, "709b9d4709d5aa08"),
    "deserialize_job_raw": (jobs.deserialize_job_raw, "f330dfaff8e2160f"),
    "deserialize_result": (jobs.deserialize_result, "500bdf28141b60f8"),
    "Job.status": (jobs.Job.status, "b7b8d9da80a12c10"),
    "Job.result_info": (jobs.Job.result_info, "befb175894204ee6"),
}


def test_the_records_the_seam_writes_are_read_by_arq_as_before() -> None:
    changed = [
        name
        for name, (member, pinned) in RECORDS.items()
        if hashlib.sha256(inspect.getsource(member).encode()).hexdigest()[:16] != pinned
    ]
    assert not changed, f"arq changed {changed}: compare with ArqWorker.run_job and _write_finishes, then re-pin"
    keys = (constants.job_key_prefix, constants.in_progress_key_prefix, constants.result_key_prefix)
    assert (*keys, constants.abort_jobs_ss) == ("arq:job:", "arq:in-progress:", "arq:result:", "arq:abort")
