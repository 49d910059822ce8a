"""A throwaway PostgreSQL database with the ledger schema, made on a server tests (or a bench run) may use
and dropped at the end: the integration tests' session database and `make bench`'s."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.infra import db


def with_database(url: str, name: str) -> str:
    """`url` pointed at the database `name`."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def create_database(admin_url: str, prefix: str) -> str:
    """Create `<prefix>_<random>` through `admin_url`, apply the migrations, return its URL.

    Connection and server errors propagate (OSError, TimeoutError, asyncpg.PostgresError): the caller says
    which service is unreachable.
    """
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(admin_url, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(admin_url, name)
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await db.apply_migrations(conn)
    finally:
        await conn.close()
    return url


async def drop_database(admin_url: str, url: str) -> None:
    """Drop the database of `url`, closing whatever is still connected to it."""
    name = urlsplit(url).path.lstrip("/")
    admin = await asyncpg.connect(admin_url, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
