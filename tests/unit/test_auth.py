"""Bearer authentication: what is accepted, what is refused, and the claims that matter."""

from __future__ import annotations

import time

import jwt
import pytest
from pydantic import SecretStr

from gateway.auth import Principal, Role, authenticate
from shared.errors import Unauthenticated
from shared.settings import AuthConfig
from support.helpers import TEST_JWT_SECRET, make_token

CONFIG = AuthConfig(jwt_secret=SecretStr(TEST_JWT_SECRET))


def test_valid_token_gives_its_principal() -> None:
    principal = authenticate(f"Bearer {make_token('alice', role='admin')}", CONFIG)

    assert principal == Principal(sub="alice", role=Role.ADMIN)
    assert principal.can_see("bob")


def test_role_defaults_to_user_who_sees_only_their_own() -> None:
    token = jwt.encode({"sub": "bob", "exp": int(time.time()) + 60}, TEST_JWT_SECRET, algorithm="HS256")

    principal = authenticate(f"Bearer {token}", CONFIG)

    assert principal.role is Role.USER
    assert principal.can_see("bob")
    assert not principal.can_see("alice")


@pytest.mark.parametrize("role", ["root", "", 7])
def test_unknown_roles_are_refused(role: object) -> None:
    with pytest.raises(Unauthenticated, match="role"):
        authenticate(f"Bearer {make_token('x', role=role)}", CONFIG)  # type: ignore[arg-type]  # on purpose


def test_small_clock_skew_is_tolerated() -> None:
    assert authenticate(f"Bearer {make_token('a', ttl_s=-5)}", CONFIG).sub == "a"


def test_issuer_and_audience_are_checked_when_configured() -> None:
    config = AuthConfig(jwt_secret=SecretStr(TEST_JWT_SECRET), jwt_issuer="https://idp", jwt_audience="conveyor")
    good = make_token("a", iss="https://idp", aud="conveyor")

    assert authenticate(f"Bearer {good}", config).sub == "a"
    for bad in (
        make_token("a"),
        make_token("a", iss="https://evil", aud="conveyor"),
        make_token("a", iss="https://idp", aud="x"),
    ):
        with pytest.raises(Unauthenticated):
            authenticate(f"Bearer {bad}", config)


def test_algorithm_confusion_is_refused() -> None:
    token = jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, TEST_JWT_SECRET, algorithm="HS512")

    with pytest.raises(Unauthenticated):
        authenticate(f"Bearer {token}", CONFIG)
