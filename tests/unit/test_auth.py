"""Bearer JWTs: what is accepted, what is refused (forged, confused, expired, incomplete), and `conveyor token`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from devstack.cli import main
from gateway.security.auth import Principal, bearer_token, verify_jwt
from shared.accounts.roles import ADMIN, USER
from shared.core.errors import Unauthenticated
from shared.core.settings import AuthConfig
from support.helpers import TEST_JWT_SECRET, make_token

CONFIG = AuthConfig(jwt_secret=SecretStr(TEST_JWT_SECRET), jwt_leeway_s=30)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _forge(header: dict[str, object], claims: dict[str, object], key: bytes | None) -> str:
    """A JWT built by hand, as an attacker would: any header, signed HS256 with `key` (or unsigned)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _claims(**extra: object) -> dict[str, object]:
    return {"sub": "mallory", "role": "admin", "exp": int(time.time()) + 600, **extra}


def test_valid_token_gives_its_principal() -> None:
    principal = verify_jwt(make_token("alice", role="admin"), CONFIG)

    assert principal == Principal(sub="alice", role=ADMIN)
    assert principal.can_see("bob")


def test_role_defaults_to_user_who_sees_only_their_own() -> None:
    token = jwt.encode({"sub": "bob", "exp": int(time.time()) + 60}, TEST_JWT_SECRET, algorithm="HS256")

    principal = verify_jwt(token, CONFIG)

    assert principal.role == USER
    assert principal.can_see("bob")
    assert not principal.can_see("alice")


@pytest.mark.parametrize("role", ["root", "", "Admin", 7, None, ["admin"]])
def test_unknown_roles_are_refused(role: object) -> None:
    with pytest.raises(Unauthenticated, match="role"):
        verify_jwt(make_token("x", role=role), CONFIG)  # type: ignore[arg-type]  # on purpose


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "none", "typ": "JWT"},
        {"alg": "None", "typ": "JWT"},
        {"alg": "NONE"},
    ],
)
def test_unsigned_tokens_are_refused(header: dict[str, object]) -> None:
    with pytest.raises(Unauthenticated):
        verify_jwt(_forge(header, _claims(), key=None), CONFIG)


def test_unsigned_token_with_the_right_signature_section_stripped_is_refused() -> None:
    good = make_token("alice", role="admin")

    with pytest.raises(Unauthenticated):
        verify_jwt(good.rsplit(".", 1)[0] + ".", CONFIG)


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_hmac_algorithms_are_refused_even_with_the_right_secret(alg: str) -> None:
    token = jwt.encode(_claims(), TEST_JWT_SECRET, algorithm=alg)

    with pytest.raises(Unauthenticated):
        verify_jwt(token, CONFIG)


def test_rs256_token_is_refused() -> None:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(_claims(), private_key, algorithm="RS256")

    with pytest.raises(Unauthenticated):
        verify_jwt(token, CONFIG)


def test_public_key_used_as_an_hmac_secret_is_refused() -> None:
    """The classic confusion: an HS256 token keyed with a public key, under an RS256 or an HS256 header."""
    public_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for alg in ("RS256", "HS256"):
        with pytest.raises(Unauthenticated):
            verify_jwt(_forge({"alg": alg, "typ": "JWT"}, _claims(), key=public_pem), CONFIG)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(Unauthenticated):
        verify_jwt(make_token("alice", secret="another-secret-" + "x" * 32), CONFIG)


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "e30.e30.", "cvk_not_a_jwt"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(Unauthenticated):
        verify_jwt(token, CONFIG)


def test_hand_forged_hs256_with_the_right_secret_is_accepted() -> None:
    """The forging helper is sound: only its header or key makes the tokens above fail."""
    token = _forge({"alg": "HS256", "typ": "JWT"}, _claims(), key=TEST_JWT_SECRET.encode())

    assert verify_jwt(token, CONFIG) == Principal(sub="mallory", role=ADMIN)


def test_expired_within_the_leeway_is_accepted() -> None:
    assert verify_jwt(make_token("a", ttl_s=-10), CONFIG).sub == "a"


def test_expired_beyond_the_leeway_is_refused() -> None:
    with pytest.raises(Unauthenticated, match="expired"):
        verify_jwt(make_token("a", ttl_s=-60), CONFIG)


def test_no_leeway_refuses_any_expired_token() -> None:
    strict = AuthConfig(jwt_secret=SecretStr(TEST_JWT_SECRET), jwt_leeway_s=0)

    with pytest.raises(Unauthenticated, match="expired"):
        verify_jwt(make_token("a", ttl_s=-2), strict)


@pytest.mark.parametrize("missing", ["sub", "exp"])
def test_tokens_without_sub_or_exp_are_refused(missing: str) -> None:
    claims = _claims()
    del claims[missing]

    with pytest.raises(Unauthenticated):
        verify_jwt(jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256"), CONFIG)


@pytest.mark.parametrize("sub", ["", 42, "x" * 201])
def test_empty_non_string_or_huge_sub_is_refused(sub: object) -> None:
    with pytest.raises(Unauthenticated):
        verify_jwt(jwt.encode(_claims(sub=sub), TEST_JWT_SECRET, algorithm="HS256"), CONFIG)


def test_issuer_and_audience_are_not_checked_when_not_configured() -> None:
    token = make_token("a", iss="https://anyone", aud="anything")

    assert verify_jwt(token, CONFIG).sub == "a"


def test_issuer_and_audience_are_checked_when_configured() -> None:
    config = AuthConfig(jwt_secret=SecretStr(TEST_JWT_SECRET), jwt_issuer="https://idp", jwt_audience="conveyor")
    good = make_token("a", iss="https://idp", aud="conveyor")

    assert verify_jwt(good, config).sub == "a"
    for bad in (
        make_token("a"),
        make_token("a", iss="https://idp"),
        make_token("a", aud="conveyor"),
        make_token("a", iss="https://evil", aud="conveyor"),
        make_token("a", iss="https://idp", aud="x"),
    ):
        with pytest.raises(Unauthenticated):
            verify_jwt(bad, config)


def test_issuer_alone_is_checked_when_only_it_is_configured() -> None:
    config = AuthConfig(jwt_secret=SecretStr(TEST_JWT_SECRET), jwt_issuer="https://idp")

    assert verify_jwt(make_token("a", iss="https://idp", aud="whatever"), config).sub == "a"
    with pytest.raises(Unauthenticated):
        verify_jwt(make_token("a", iss="https://other"), config)


def test_audience_alone_is_checked_when_only_it_is_configured() -> None:
    config = AuthConfig(jwt_secret=SecretStr(TEST_JWT_SECRET), jwt_audience="conveyor")

    assert verify_jwt(make_token("a", aud=["other", "conveyor"]), config).sub == "a"
    with pytest.raises(Unauthenticated):
        verify_jwt(make_token("a", aud="other"), config)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic abc", "Token abc"])
def test_a_missing_or_non_bearer_authorization_header_is_refused(header: str | None) -> None:
    with pytest.raises(Unauthenticated):
        bearer_token(header)


def test_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("bearer abc ") == "abc"


@pytest.fixture
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ENVIRONMENT", "JWT_SECRET", "JWT_MAX_LIFETIME_S"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


DEV = AuthConfig(environment="development")  # what `conveyor token` signs with when nothing is set


def test_cli_token_takes_sub_role_and_ttl(capsys: pytest.CaptureFixture[str], no_environment: None) -> None:
    config = DEV

    assert main(["token", "--sub", "carol", "--role", "admin", "--ttl", "120"]) == 0

    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, config.jwt_secret.get_secret_value(), algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 120
    assert verify_jwt(token, config) == Principal(sub="carol", role=ADMIN)


def test_cli_token_defaults_to_a_user_for_an_hour(capsys: pytest.CaptureFixture[str], no_environment: None) -> None:
    assert main(["token", "--sub", "dave"]) == 0

    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, DEV.jwt_secret.get_secret_value(), algorithms=["HS256"])
    assert (claims["role"], claims["exp"] - claims["iat"]) == ("user", 3600)


# JWT_MAX_LIFETIME_S: from `iat` (or now, without one) to `exp`, whoever signed the token.

DAY = 86400


@pytest.mark.parametrize(
    "claims",
    [
        {"iat": 0, "exp": 365 * DAY},  # relative to now, see _at_now
        {"exp": 365 * DAY},
        {"iat": -3 * DAY, "exp": 600},  # issued long ago, about to expire: still a token minted for 3 days
        {"iat": 0, "exp": DAY + 31},  # one second past the maximum and the leeway
    ],
)
def test_a_token_valid_for_longer_than_the_maximum_is_refused(claims: dict[str, int]) -> None:
    with pytest.raises(Unauthenticated, match=r"longer than this gateway accepts \(86400 s"):
        verify_jwt(jwt.encode(_at_now(claims), TEST_JWT_SECRET, algorithm="HS256"), CONFIG)


@pytest.mark.parametrize("claims", [{"iat": 0, "exp": DAY}, {"exp": DAY}, {"iat": -DAY + 60, "exp": 60}])
def test_a_token_within_the_maximum_is_accepted(claims: dict[str, int]) -> None:
    assert verify_jwt(jwt.encode(_at_now(claims), TEST_JWT_SECRET, algorithm="HS256"), CONFIG).sub == "mallory"


def test_the_maximum_is_a_setting() -> None:
    hourly = AuthConfig(jwt_secret=SecretStr(TEST_JWT_SECRET), jwt_max_lifetime_s=3600, jwt_leeway_s=0)
    token = jwt.encode(_at_now({"iat": 0, "exp": 3601}), TEST_JWT_SECRET, algorithm="HS256")

    with pytest.raises(Unauthenticated, match=r"\(3600 s from `iat` to `exp`\)"):
        verify_jwt(token, hourly)
    assert verify_jwt(token, CONFIG).sub == "mallory"


def _at_now(claims: dict[str, int]) -> dict[str, object]:
    now = int(time.time())
    return {"sub": "mallory", **{name: now + offset for name, offset in claims.items()}}


def test_cli_token_does_not_mint_beyond_the_maximum(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_environment: None
) -> None:
    assert main(["token", "--sub", "erin", "--ttl", str(DAY + 1)]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert "--ttl-s 86401 is longer than JWT_MAX_LIFETIME_S (86400 s)" in out.err

    monkeypatch.setenv("JWT_MAX_LIFETIME_S", "600")
    assert main(["token", "--sub", "erin", "--ttl", "601"]) == 2
    assert main(["token", "--sub", "erin", "--ttl", "600"]) == 0
