"""Gateway HTTP load: N jobs POSTed with no worker running, so the gateway's own cost is what is measured."""

from __future__ import annotations

import time

from conveyor_client import Client, post_jobs
from harness import Figures, cpu_seconds


async def gateway_phase(c: Client) -> tuple[Figures, int]:
    """POST N jobs with no worker running: the gateway alone (ledger insert + Redis enqueue per request)."""
    assert c.stack.gateway is not None  # noqa: S101 - started by the caller
    pid = c.stack.gateway.pid
    gw_cpu, client_cpu = cpu_seconds(pid), time.process_time()
    load = await post_jobs(c, c.cfg.jobs)
    per_request = 1000 / max(load.ok, 1)
    return {
        **load.figures("enqueue"),
        "gateway_cpu_ms_per_request": (cpu_seconds(pid) - gw_cpu) * per_request,
        "client_cpu_ms_per_request": (time.process_time() - client_cpu) * per_request,
    }, load.ok
