"""Authenticate a request's bearer token (a JWT or an API key) and return a Principal.

The one state kept between requests is a bounded memo of verified JWTs (VerifiedTokens): verifying a JWT
costs more CPU than the rest of a job submission's checks, and a client sends the same token for many
requests. An API key is never memoised: it is checked against the ledger every time, so a revocation holds
at once.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from shared.accounts import api_keys
from shared.accounts.roles import ADMIN, USER, Role, as_role
from shared.core.errors import Unauthenticated
from shared.core.settings import AuthConfig
from shared.infra.db import Pool


@dataclass(frozen=True, slots=True)
class Principal:
    sub: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    def can_see(self, owner: str) -> bool:
        return self.is_admin or owner == self.sub

    @property
    def visible_owner(self) -> str | None:
        """The owner filter of this caller's lookups and lists: None (everyone's) for an admin, else its own."""
        return None if self.is_admin else self.sub


def bearer_token(header: str | None) -> str:
    if not header:
        raise Unauthenticated("missing Authorization header; send `Authorization: Bearer <token>`")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be `Bearer <token>`")
    return token.strip()


class VerifiedTokens:
    """The JWTs verified lately, each with its Principal, until its `exp`: a bounded LRU.

    Entries are keyed by a digest of the token and of every setting that decides its verification (secret,
    issuer, audience, leeway, lifetime), never by the token itself, and only a token that passed `verify_jwt`
    enters. A hit gives what `verify_jwt` would: its signature and claims cannot change, and every time check
    but expiry only ever turns from refusing to passing as time goes on (`nbf`, `iat`, the lifetime bound),
    so expiry is checked again on every hit, as PyJWT checks it.
    """

    def __init__(self, max_entries: int = 10_000, *, clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[Principal, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"VerifiedTokens({len(self._entries)} of {self.max_entries})"

    def verify(self, token: str, config: AuthConfig) -> Principal:
        """`verify_jwt(token, config)`, from the memo when the token was verified before.

        Raises:
            Unauthenticated: as `verify_jwt`.
        """
        key = _digest(token, config)
        entry = self._entries.get(key)
        if entry is not None:
            principal, exp = entry
            if exp > self._clock() - config.jwt_leeway_s:
                self._entries.move_to_end(key)
                return principal
            del self._entries[key]
            raise Unauthenticated("the token has expired")
        principal, exp = _verify(token, config)
        self._entries[key] = (principal, exp)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return principal


def _digest(token: str, config: AuthConfig) -> bytes:
    settings = (
        config.jwt_secret.get_secret_value(), config.jwt_issuer, config.jwt_audience, config.jwt_leeway_s,
        config.jwt_max_lifetime_s,
    )  # fmt: skip
    return hashlib.sha256(repr((settings, token)).encode()).digest()


# The gateway's memo (one per process; entries of different settings never meet, see _digest).
VERIFIED = VerifiedTokens()


async def authenticate(
    header: str | None, config: AuthConfig, pool: Pool, *, verified: VerifiedTokens = VERIFIED
) -> Principal:
    """The Principal behind `Authorization: Bearer <token>`: an API key (`cvk_…`) or an HS256 JWT.

    An API key is checked against PostgreSQL on every call, so a revocation holds at once on every gateway.

    Raises:
        Unauthenticated: no token, or one that is malformed, expired, revoked or wrongly signed.
    """
    token = bearer_token(header)
    if api_keys.is_api_key(token):
        key = await api_keys.verify(pool, token)
        if key is None:
            raise Unauthenticated("the API key is not valid (unknown, revoked or mistyped)")
        return Principal(sub=key.sub, role=key.role)
    return verified.verify(token, config)


def verify_jwt(token: str, config: AuthConfig) -> Principal:
    """Verify an HS256 JWT (`sub` and `exp` required; `iss`/`aud` only when configured; `exp` with leeway;
    a lifetime of at most JWT_MAX_LIFETIME_S).

    Raises:
        Unauthenticated: malformed, expired, wrongly signed or too long-lived token (the reason stays generic).
    """
    return _verify(token, config)[0]


def _verify(token: str, config: AuthConfig) -> tuple[Principal, int]:
    """The token's Principal and its `exp` as PyJWT compares it (a whole number of seconds)."""
    try:
        claims = jwt.decode(
            token,
            config.jwt_secret.get_secret_value(),
            algorithms=["HS256"],  # a fixed list: `alg: none` and algorithm confusion are refused
            issuer=config.jwt_issuer,
            audience=config.jwt_audience,
            leeway=config.jwt_leeway_s,
            options={"require": ["sub", "exp"], "verify_aud": config.jwt_audience is not None},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthenticated("the token has expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthenticated("the token is not valid") from exc
    _check_lifetime(claims, config)
    sub, role = claims.get("sub"), as_role(claims.get("role", USER))
    if not isinstance(sub, str) or not sub or len(sub) > 200:
        raise Unauthenticated("the token's `sub` claim must be a non-empty string")
    if role is None:
        raise Unauthenticated("the token's `role` claim must be `user` or `admin`")
    return Principal(sub=sub, role=role), int(claims["exp"])


def _check_lifetime(claims: dict[str, Any], config: AuthConfig) -> None:
    """Refuse a token valid for longer than JWT_MAX_LIFETIME_S: from its `iat` (or from now, without one) to its
    `exp`. A leaked token then stops working within that bound, whatever lifetime its issuer chose."""
    now = time.time()
    issued = claims.get("iat")
    start = min(float(issued), now) if isinstance(issued, int | float) else now
    if float(claims["exp"]) - start > config.jwt_max_lifetime_s + config.jwt_leeway_s:
        raise Unauthenticated(
            f"the token is valid for longer than this gateway accepts ({config.jwt_max_lifetime_s:g} s from `iat` "
            "to `exp`); ask for a shorter-lived token"
        )
