"""API keys: the creation request, create (the token is returned once), list, revoke and verify; only a
salted hash is stored.

A token is `cvk_<16 hex>_<43 url-safe chars>`: the hex part names the row (`key_<hex>`), so verifying is
one primary-key read and a constant-time comparison. The secret is 32 random bytes, so a salted SHA-256
HMAC is enough: nobody can brute-force 256 bits however fast the hash, and a slow KDF (scrypt, PBKDF2)
would only add its cost to every request. The per-key salt keeps equal inputs from giving equal hashes
and makes a leaked table useless for precomputed lookups.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, fields
from typing import Annotated

import asyncpg
from pydantic import BaseModel, ConfigDict, StringConstraints

from shared.accounts.roles import ADMIN, USER, Role
from shared.infra import pages
from shared.infra.db import Connection, Pool

KEY_PREFIX = "cvk_"
_TOKEN = re.compile(r"cvk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
# Surrounding whitespace is stripped, so at least one other character is needed (the pattern says so).
_Text = StringConstraints(strip_whitespace=True, min_length=1, pattern=r"\S")


class KeyRequest(BaseModel):
    """The body of `POST /api/v1/api-keys`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, _Text, StringConstraints(max_length=100)]
    sub: Annotated[str, _Text, StringConstraints(max_length=200)]
    role: Role = USER


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    sub: str
    role: Role
    prefix: str
    created_at: dt.datetime
    created_by: str
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ApiKey:
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: ApiKey
    token: str  # the only time the secret exists outside the caller


def _digest(salt: bytes, secret: str) -> bytes:
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def is_api_key(token: str) -> bool:
    """Whether a bearer token claims to be an API key (JWTs never start with `cvk_`)."""
    return token.startswith(KEY_PREFIX)


async def create(conn: Connection | Pool, *, name: str, sub: str, role: Role, created_by: str) -> CreatedKey:
    hex_id, secret, salt = secrets.token_hex(8), secrets.token_urlsafe(32), secrets.token_bytes(16)
    row = await conn.fetchrow(
        "INSERT INTO api_keys (id, name, sub, role, prefix, salt, hash, created_by)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *",
        f"key_{hex_id}", name, sub, role, f"{KEY_PREFIX}{hex_id}", salt, _digest(salt, secret), created_by,
    )  # fmt: skip
    assert row is not None  # noqa: S101 - INSERT … RETURNING always returns the row
    return CreatedKey(key=ApiKey.from_row(row), token=f"{KEY_PREFIX}{hex_id}_{secret}")


async def list_keys(conn: Connection | Pool, *, limit: int, cursor: str | None) -> tuple[list[ApiKey], str | None]:
    """Newest first (revoked ones included, with `revoked_at`), keyset-paginated on (created_at, id); a page
    reads only what it shows, never a key's salt or hash."""
    return await pages.newest_first(
        conn, "api_keys", ApiKey.from_row, equal={}, limit=limit, cursor=cursor, columns=pages.columns_of(ApiKey)
    )


async def revoke(conn: Connection | Pool, key_id: str) -> ApiKey | None:
    """Revoke a live key; None when there is no such key or it is revoked already (its revocation time stays)."""
    row = await conn.fetchrow(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING *", key_id
    )
    return None if row is None else ApiKey.from_row(row)


async def verify(conn: Connection | Pool, token: str) -> ApiKey | None:
    """The live key a token names, or None (malformed, unknown, wrong secret or revoked).

    Reads PostgreSQL every time, so a revocation holds on the very next request on every gateway.
    `last_used_at` is written at most once a minute per key (the database clock decides), so a busy
    key costs one read per request, not a write.
    """
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    row = await conn.fetchrow(
        "SELECT *, (last_used_at IS NULL OR last_used_at < now() - interval '1 minute') AS stale"
        " FROM api_keys WHERE id = $1",
        f"key_{match[1]}",
    )
    if row is None or not hmac.compare_digest(row["hash"], _digest(row["salt"], match[2])):
        return None
    if row["revoked_at"] is not None:
        return None
    if row["stale"]:
        await conn.execute(
            "UPDATE api_keys SET last_used_at = now()"
            " WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
            row["id"],
        )
    return ApiKey.from_row(row)


def key_id(token: str) -> str | None:
    """The id of the key a well-formed API-key token names (`key_<hex>`), or None; the token is not verified."""
    match = _TOKEN.fullmatch(token)
    return None if match is None else f"key_{match[1]}"


@dataclass(frozen=True, slots=True)
class Standing:
    """What the owner of stored work (a schedule, a batch's on_complete) may still do when it runs."""

    revoked: bool  # it was created with an API key, and no key of its principal is live any more
    for_anyone: bool  # it may act for other principals (`JobSpec.on_behalf_of`): the owner is still an admin


async def standing(conn: Connection | Pool, owner: str, created_with_key: str | None) -> Standing:
    """The owner's standing now, for work created with `created_with_key` (None: with a JWT).

    A key's principal is looked up by its `sub`, so a replacement key (rotation) keeps the owner's work
    running; a principal all of whose keys are revoked has none, and one left with only `user` keys may no
    longer act for others. A JWT is stateless: nothing can be looked up, the work runs as it was accepted.
    """
    if created_with_key is None:
        return Standing(revoked=False, for_anyone=True)  # checked when the work was accepted
    roles = {
        r["role"] for r in await conn.fetch("SELECT role FROM api_keys WHERE sub = $1 AND revoked_at IS NULL", owner)
    }
    return Standing(revoked=not roles, for_anyone=ADMIN in roles)
