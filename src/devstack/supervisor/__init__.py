"""`conveyor run`, the local supervisor: embedded servers, the gateway and workers kept running, stopped in order."""

from devstack.supervisor.banner import ADMIN_TOKEN_TTL_S, gateway_url, mint_token
from devstack.supervisor.children import SupervisorError
from devstack.supervisor.options import PROCESS_NAMES, WORKER_NAMES, RestartPolicy, RunOptions
from devstack.supervisor.supervise import run

__all__ = [
    "ADMIN_TOKEN_TTL_S",
    "PROCESS_NAMES",
    "WORKER_NAMES",
    "RestartPolicy",
    "RunOptions",
    "SupervisorError",
    "gateway_url",
    "mint_token",
    "run",
]
