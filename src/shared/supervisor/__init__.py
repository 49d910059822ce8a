"""`conveyor run`, the local supervisor: embedded servers, the gateway and workers kept running, stopped in order."""

from shared.supervisor.banner import ADMIN_TOKEN_TTL_S, gateway_url, mint_token
from shared.supervisor.children import SupervisorError
from shared.supervisor.options import PROCESS_NAMES, WORKER_NAMES, RestartPolicy, RunOptions
from shared.supervisor.supervise import run

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
