"""Private Redis and PostgreSQL servers for local runs: free 127.0.0.1 ports, data on disk, shared per directory."""

from shared.embedded.postgres_server import POSTGRES_MISSING, EmbeddedPostgres, fallback_home, find_postgres
from shared.embedded.process import (
    HOST,
    PARENT_PID_ENV,
    RESERVED_PORTS,
    EmbeddedServerError,
    die_with_parent,
    follow_parent,
    free_port,
    parent_gone,
)
from shared.embedded.redis_server import EmbeddedRedis, find_redis_server

__all__ = [
    "HOST",
    "PARENT_PID_ENV",
    "POSTGRES_MISSING",
    "RESERVED_PORTS",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "die_with_parent",
    "fallback_home",
    "find_postgres",
    "find_redis_server",
    "follow_parent",
    "free_port",
    "parent_gone",
]
