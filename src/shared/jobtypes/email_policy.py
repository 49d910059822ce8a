"""Who `email.send` may write to (per role) and how much an owner may send per hour (Redis db 0).

The recipient policy is checked twice: at submission, where the caller's role is known, and in the worker
before sending, where it is not (the ledger keeps a job's `owner`, not the role of the token that created
it). There an owner counts as an admin only while it holds a live admin API key; every other owner, the
sub of an admin JWT included, gets the user policy. A job that reached the ledger some other way (a
schedule, a batch's `on_complete`, a row written by hand) is held to the same check.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, Final, cast

from shared.core.settings import Environment, MailPolicyConfig
from shared.infra.db import Connection, Pool
from shared.infra.redis import CacheRedis

PREFIX: Final = "conveyor:mail:"
# The rate window: what an owner sent in the last hour counts against MAIL_PER_OWNER_PER_HOUR.
WINDOW_S: Final = 3600


def _domain(value: str) -> str:
    """A domain in one spelling for comparison: lower case, no trailing dot, IDNA (punycode) where it encodes."""
    domain = value.strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def _address(value: str) -> str:
    local, _, domain = value.strip().rpartition("@")
    return f"{local.lower()}@{_domain(domain)}"


@dataclass(frozen=True, slots=True)
class RecipientPolicy:
    """The addresses a sender may write to: anyone, or the listed addresses and domains (exact, sub-domains
    are listed on their own)."""

    anywhere: bool
    addresses: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()

    @classmethod
    def for_role(cls, config: MailPolicyConfig, *, admin: bool) -> RecipientPolicy:
        """Admins write to anyone; users to MAIL_ALLOWED_RECIPIENTS, which when empty means anyone in
        development and nobody otherwise."""
        entries = [e.strip() for e in config.allowed_recipients.split(",") if e.strip()]
        if admin or (not entries and config.environment is Environment.DEVELOPMENT):
            return cls(anywhere=True)
        return cls(
            anywhere=False,
            addresses=frozenset(_address(e) for e in entries if "@" in e),
            domains=frozenset(_domain(e) for e in entries if "@" not in e),
        )

    def allows(self, address: str) -> bool:
        if self.anywhere:
            return True
        normal = _address(address)
        return normal in self.addresses or normal.rpartition("@")[2] in self.domains

    def refusal(self, address: str) -> str:
        """Why `address` is refused, for the caller (names the setting, never its value)."""
        if not self.addresses and not self.domains:
            return f"{address} may not be written to: MAIL_ALLOWED_RECIPIENTS allows no recipient for a user"
        return f"{address} is not among the recipients MAIL_ALLOWED_RECIPIENTS allows for a user"


async def owner_is_admin(conn: Connection | Pool, owner: str) -> bool:
    """Whether `owner` holds a live admin API key: the only standing a worker can see (JWT roles live in the
    token alone)."""
    found = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM api_keys WHERE sub = $1 AND role = 'admin' AND revoked_at IS NULL)", owner
    )
    return bool(found)


def distinct_recipients(addresses: Iterable[str]) -> int:
    """How many mailboxes a message goes to (an address listed twice is one)."""
    return len({_address(a) for a in addresses})


# A sliding window per owner: a sorted set of the jobs that sent (score: when, ms) and a hash of how many
# recipients each had. A job already counted inside the window counts once (its retry after a transient
# SMTP error, or after a crash between counting and sending). Returns 0 when the send may go, else the ms
# until enough of the window frees for it.
_TAKE: Final = """
local now, window, cap, job, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
for _, member in ipairs(old) do redis.call('HDEL', KEYS[2], member) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZSCORE', KEYS[1], job) then return 0 end
local used = 0
for _, count in ipairs(redis.call('HVALS', KEYS[2])) do used = used + tonumber(count) end
if used + n <= cap then
  redis.call('ZADD', KEYS[1], now, job)
  redis.call('HSET', KEYS[2], job, n)
  redis.call('PEXPIRE', KEYS[1], window)
  redis.call('PEXPIRE', KEYS[2], window)
  return 0
end
local freed, entries = 0, redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  freed = freed + tonumber(redis.call('HGET', KEYS[2], entries[i]) or '0')
  if used - freed + n <= cap then return math.max(1, tonumber(entries[i + 1]) + window - now) end
end
return window
"""


async def take_budget(cache: CacheRedis, owner: str, job_id: str, *, recipients: int, per_hour: int) -> float:
    """Count a message to `recipients` mailboxes against `owner`'s hourly budget.

    Returns:
        0.0 when it may be sent now (counted), else the seconds until the window has room for it
        (nothing counted). `recipients` over `per_hour` never fits: the caller refuses that job.
    """
    keys = (f"{PREFIX}sent:{owner}", f"{PREFIX}count:{owner}")
    args = (str(int(time.time() * 1000)), str(WINDOW_S * 1000), str(per_hour), job_id, str(recipients))
    # redis-py types eval for both its sync and async clients; the async one always returns an awaitable.
    wait_ms = int(await cast(Awaitable[Any], cache.eval(_TAKE, 2, *keys, *args)))
    return 0.0 if wait_ms <= 0 else math.ceil(wait_ms) / 1000
