"""gateway.security.auth.VerifiedTokens: a verified JWT is remembered until its `exp`, and the memo never
answers other than `verify_jwt` would."""

from __future__ import annotations

import time

import jwt
import pytest
from pydantic import SecretStr

from gateway.security.auth import Principal, VerifiedTokens, verify_jwt
from shared.accounts.roles import ADMIN, USER
from shared.core.errors import Unauthenticated
from shared.core.settings import AuthConfig
from support.helpers import TEST_JWT_SECRET, make_token

CONFIG = AuthConfig(jwt_secret=SecretStr(TEST_JWT_SECRET), jwt_leeway_s=30)


class Clock:
    """A wall clock a test moves by hand (the memo's; PyJWT keeps reading the real one)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_a_cached_token_is_refused_once_past_its_exp_and_leeway() -> None:
    clock = Clock()
    cache = VerifiedTokens(clock=clock)
    token = make_token("alice", ttl_s=60)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert cache.verify(token, CONFIG) == Principal("alice", USER)

    clock.now = exp + CONFIG.jwt_leeway_s - 1
    assert cache.verify(token, CONFIG) == Principal("alice", USER)  # still within the leeway
    clock.now = exp + CONFIG.jwt_leeway_s

    with pytest.raises(Unauthenticated, match="expired"):
        cache.verify(token, CONFIG)
    assert len(cache) == 0


def test_a_token_with_another_signature_is_refused_though_its_twin_is_cached() -> None:
    cache = VerifiedTokens()
    token = make_token("alice", role="admin")
    assert cache.verify(token, CONFIG) == Principal("alice", ADMIN)
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode(claims, "another-secret-" + "x" * 32, algorithm="HS256")
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")

    for bad in (forged, tampered):
        with pytest.raises(Unauthenticated, match="not valid"):
            cache.verify(bad, CONFIG)
    assert len(cache) == 1


def test_different_tokens_and_different_settings_never_share_an_entry() -> None:
    cache = VerifiedTokens()
    alice, bob = make_token("alice"), make_token("bob", role="admin")
    assert cache.verify(alice, CONFIG) == Principal("alice", USER)
    assert cache.verify(bob, CONFIG) == Principal("bob", ADMIN)
    assert len(cache) == 2

    other = CONFIG.model_copy(update={"jwt_secret": SecretStr("another-secret-" + "x" * 32)})
    with pytest.raises(Unauthenticated):
        cache.verify(alice, other)  # a gateway with another secret refuses it, memo or not
    short = CONFIG.model_copy(update={"jwt_max_lifetime_s": 60.0, "jwt_leeway_s": 0.0})
    with pytest.raises(Unauthenticated, match="longer"):
        cache.verify(alice, short)


def test_the_memo_is_bounded_and_keeps_the_tokens_used_lately() -> None:
    cache = VerifiedTokens(max_entries=3)
    tokens = [make_token(f"user{i}") for i in range(3)]
    for token in tokens:
        cache.verify(token, CONFIG)
    cache.verify(tokens[0], CONFIG)  # used again: the oldest is now tokens[1]

    for i in range(3, 5):
        assert cache.verify(make_token(f"user{i}"), CONFIG) == Principal(f"user{i}", USER)
        assert len(cache) == 3

    # user1 and user2 went, oldest first; user0, used again, stayed
    assert [principal.sub for principal, _ in cache._entries.values()] == ["user0", "user3", "user4"]

    with pytest.raises(ValueError, match="at least 1"):
        VerifiedTokens(max_entries=0)


def test_the_memo_holds_no_token_in_the_clear() -> None:
    cache = VerifiedTokens()
    token = make_token("alice")
    cache.verify(token, CONFIG)

    assert token not in repr(cache)
    assert all(token.encode() not in key for key in cache._entries)


@pytest.mark.parametrize(
    "token",
    [
        make_token("alice", ttl_s=-120),  # expired past the leeway
        make_token("alice", ttl_s=10 * 86400),  # longer-lived than JWT_MAX_LIFETIME_S
        make_token("alice", role="root"),
        make_token("", role="user"),
        make_token("alice", nbf=int(time.time()) + 600),  # not yet valid
        "not-a-jwt",
    ],
)
def test_every_refusal_is_verify_jwts_own_and_is_never_remembered(token: str) -> None:
    cache = VerifiedTokens()
    with pytest.raises(Unauthenticated) as direct:
        verify_jwt(token, CONFIG)
    for _ in range(2):
        with pytest.raises(Unauthenticated) as cached:
            cache.verify(token, CONFIG)
        assert cached.value.message == direct.value.message
    assert len(cache) == 0
