"""The `conveyor run` banner: a ready-to-use admin token in development only, never past JWT_MAX_LIFETIME_S."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any, cast

import jwt
from pydantic import SecretStr

from devstack.supervisor.banner import banner
from shared.core.settings import AuthConfig, GatewayConfig
from support.helpers import TEST_JWT_SECRET

_JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")


def _banner(auth: AuthConfig) -> str:
    gateway = cast(Any, SimpleNamespace(spec=SimpleNamespace(is_gateway=True), pid=4242, name="gateway"))
    return banner([gateway], GatewayConfig(port=8080), auth, [], "127.0.0.1")


def _token_claims(text: str) -> dict[str, Any]:
    found = _JWT.search(text)
    assert found is not None, text
    claims: dict[str, Any] = jwt.decode(found.group(), TEST_JWT_SECRET, algorithms=["HS256"])
    return claims


def test_development_prints_a_24_h_admin_token() -> None:
    text = _banner(AuthConfig(environment="development", jwt_secret=SecretStr(TEST_JWT_SECRET)))

    claims = _token_claims(text)
    assert (claims["sub"], claims["role"], claims["exp"] - claims["iat"]) == ("admin", "admin", 24 * 3600)
    assert "(24 h; more with `conveyor token" in text


def test_production_prints_no_token() -> None:
    text = _banner(AuthConfig(environment="production", jwt_secret=SecretStr(TEST_JWT_SECRET)))

    assert _JWT.search(text) is None
    assert "http://127.0.0.1:8080" in text
    assert "conveyor token --sub NAME --role admin" in text


def test_the_token_never_outlives_the_maximum() -> None:
    auth = AuthConfig(environment="development", jwt_secret=SecretStr(TEST_JWT_SECRET), jwt_max_lifetime_s=7200)

    text = _banner(auth)

    claims = _token_claims(text)
    assert claims["exp"] - claims["iat"] == 7200
    assert "(2 h; more with" in text
