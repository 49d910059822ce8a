"""What `conveyor run` starts: its options, and the plan of child processes (names, commands, ports)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

PROCESS_NAMES: Final = ("gateway", "default", "heavy", "scheduler")
WORKER_NAMES: Final = ("default", "heavy", "scheduler")
LogFormat = Literal["json", "console"]
_QUIET_RESOURCE_TRACKER: Final = "ignore:resource_tracker:UserWarning:multiprocessing.resource_tracker"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How a child that exits on its own is restarted, and when that is given up as a crash loop."""

    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    healthy_after_s: float = 60.0  # up this long: the next restart starts again from `first_delay_s`
    max_exits: int = 5  # exits of one child within `window_s` that make `conveyor run` give up
    window_s: float = 60.0

    def delay_s(self, restart: int) -> float:
        """The wait before restart number `restart` (1, 2, …) since the child was last healthy."""
        return min(self.first_delay_s * 2.0 ** max(restart - 1, 0), self.max_delay_s)


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What `conveyor run` starts (a subset of PROCESS_NAMES) and where embedded servers keep their data.

    `workers` / `heavy_workers`: processes for the `default` / `heavy` queue (None: WORKER_PROCESSES /
    HEAVY_WORKER_PROCESSES); `log_format` is given to every child, so they log as the supervisor does.
    """

    only: tuple[str, ...] = PROCESS_NAMES
    var_dir: Path = Path("var")
    ready_timeout_s: float = 60.0
    workers: int | None = None
    heavy_workers: int | None = None
    log_format: LogFormat | None = None
    restart: RestartPolicy = field(default_factory=RestartPolicy)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.only) - set(PROCESS_NAMES))
        if unknown or not self.only:
            raise ValueError(f"choose processes among {', '.join(PROCESS_NAMES)} (got {', '.join(unknown) or 'none'})")
        for count in (self.workers, self.heavy_workers):
            if count is not None and count < 1:
                raise ValueError("a queue runs at least one worker process")


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One supervised child: `gateway`, or a worker process such as `default-2` with the metrics port it gets."""

    name: str
    process: str
    metrics_port: int | None = None  # the WORKER_METRICS_PORT it is given (0: any free port); None: gateway

    @property
    def is_gateway(self) -> bool:
        return self.process == "gateway"

    def argv(self, ready_fd: int) -> list[str]:
        """The command; the child writes one JSON line to `ready_fd` once it is up."""
        if self.is_gateway:
            return [sys.executable, "-m", "gateway", "--ready-fd", str(ready_fd)]
        return [sys.executable, "-m", "workers", self.process, "--name", self.name, "--ready-fd", str(ready_fd)]

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        env = dict(base)
        if self.metrics_port is not None:
            for key in [k for k in env if k.upper() == "WORKER_METRICS_PORT"]:
                del env[key]
            env["WORKER_METRICS_PORT"] = str(self.metrics_port)
        if not self.is_gateway:
            # A worker's CPU pool (multiprocessing, spawn) has a resource tracker process. When the worker is
            # SIGKILLed, the tracker unlinks the pool's semaphores, as it should, and warns about each "leak";
            # under `conveyor run` a killed worker is expected (it is restarted), so only the warning goes.
            given = env.get("PYTHONWARNINGS", "")
            env["PYTHONWARNINGS"] = ",".join(filter(None, (given, _QUIET_RESOURCE_TRACKER)))
        return env


def plan(only: tuple[str, ...], counts: Mapping[str, int], metrics_base: int | None) -> list[ChildSpec]:
    """The children to start, gateway first; workers are named `<queue>-<n>`.

    A configured WORKER_METRICS_PORT (`metrics_base` > 0) is the first of consecutive fixed ports, one per
    worker child in order; otherwise every worker binds any free port and reports it once started.
    """
    children: list[ChildSpec] = []
    offset = 0
    for process in PROCESS_NAMES:
        if process not in only:
            continue
        if process == "gateway":
            children.append(ChildSpec("gateway", "gateway"))
            continue
        for n in range(1, counts.get(process, 1) + 1):
            port = metrics_base + offset if metrics_base else 0
            children.append(ChildSpec(f"{process}-{n}", process, port))
            offset += 1
    return children
