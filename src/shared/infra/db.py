"""asyncpg pool as an async context manager, orjson codecs for json/jsonb, and ordered SQL migrations."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any

import asyncpg

from shared.core import json
from shared.core.settings import PostgresConfig

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Pool = asyncpg.Pool[asyncpg.Record]
    Connection = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:
    Pool = asyncpg.Pool
    Connection = asyncpg.Connection

logger = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every process that migrates.
MIGRATION_LOCK_ID = 0x636F6E76  # "conv"

POSTGRES_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
# The ones that mean "PostgreSQL cannot be reached now" rather than "this query is wrong".
UNAVAILABLE_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, out of memory or disk
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown, query cancelled
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


async def _init_connection(conn: Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=_encode, decoder=json.loads, schema="pg_catalog", format="text")


async def _reset(conn: Connection) -> None:
    """Cheaper than asyncpg's default reset (a round trip on every release): we use no session state
    (LISTEN, session advisory locks, SET, cursors), so only a transaction left open needs undoing."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def _encode(value: Any) -> str:
    return json.dumps(value).decode()


@asynccontextmanager
async def open_pool(config: PostgresConfig, *, migrate: bool = True) -> AsyncIterator[Pool]:
    """Open a pool (applying pending migrations first when `migrate`) and close it on exit."""
    pool = await asyncpg.create_pool(
        dsn=config.url.get_secret_value(),
        min_size=config.pool_min,
        max_size=config.pool_max,
        timeout=config.connect_timeout_s,
        command_timeout=60,
        init=_init_connection,
        reset=_reset,
    )
    try:
        if migrate:
            async with pool.acquire() as conn:
                await apply_migrations(conn)
        yield pool
    finally:
        await pool.close()


def _migrations() -> list[tuple[str, str]]:
    folder = resources.files("shared.infra").joinpath("migrations")
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name.removesuffix(".sql"), p.read_text(encoding="utf-8")) for p in files]


async def apply_migrations(conn: Connection) -> list[str]:
    """Apply, in name order, every migration not yet recorded; safe when many processes start at once.

    Returns:
        The names applied by this call (empty when the schema was already current).
    """
    applied: list[str] = []
    async with conn.transaction():
        # A transaction-scoped lock: released on commit, never leaked by a crashed process.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for name, sql in _migrations():
            if name in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            applied.append(name)
    if applied:
        logger.info("db.migrated", extra={"migrations": applied})
    return applied


async def ping(pool: Pool) -> str:
    """`"ok"` or a short, secret-free reason."""
    try:
        async with pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")
    except POSTGRES_ERRORS as exc:
        return type(exc).__name__
    return "ok"
