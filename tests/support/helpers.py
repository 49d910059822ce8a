"""Test settings from TEST_* service URLs (never the developer's shell), tokens and polling helpers."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import jwt

TEST_JWT_SECRET = "test-secret-" + "0123456789abcdef" * 4
T = TypeVar("T")


def redis_base_url() -> str:
    """The Redis server for tests; each session claims its own pair of databases (never a developer's 0 and 1)."""
    return os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")


def postgres_admin_url() -> str:
    """A PostgreSQL database tests may connect to in order to create their own throwaway database."""
    return os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def make_token(
    sub: str, *, role: str = "user", secret: str = TEST_JWT_SECRET, ttl_s: float = 600, **claims: object
) -> str:
    now = int(time.time())
    body: dict[str, object] = {"sub": sub, "role": role, "iat": now, "exp": now + int(ttl_s), **claims}
    return jwt.encode(body, secret, algorithm="HS256")


async def eventually(check: Callable[[], Awaitable[T | None]], *, within: float = 10.0, interval: float = 0.05) -> T:
    """Poll `check` until it returns something other than None; fail with the last state at the deadline."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)
