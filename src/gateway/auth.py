"""Authenticate a request's bearer token and return a Principal; no global state."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import jwt

from shared.errors import Unauthenticated
from shared.settings import AuthConfig


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    sub: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def can_see(self, owner: str) -> bool:
        return self.is_admin or owner == self.sub


def bearer_token(header: str | None) -> str:
    if not header:
        raise Unauthenticated("missing Authorization header; send `Authorization: Bearer <token>`")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be `Bearer <token>`")
    return token.strip()


def authenticate(header: str | None, config: AuthConfig) -> Principal:
    """Verify an HS256 JWT (`sub` and `exp` required; `iss`/`aud` when configured).

    Raises:
        Unauthenticated: missing, malformed, expired or wrongly signed token (the reason stays generic).
    """
    token = bearer_token(header)
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
    sub, role = claims.get("sub"), claims.get("role", Role.USER.value)
    if not isinstance(sub, str) or not sub or len(sub) > 200:
        raise Unauthenticated("the token's `sub` claim must be a non-empty string")
    if not isinstance(role, str) or role not in {r.value for r in Role}:
        raise Unauthenticated("the token's `role` claim must be `user` or `admin`")
    return Principal(sub=sub, role=Role(role))
