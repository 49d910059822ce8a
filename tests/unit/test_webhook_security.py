"""Webhook signatures by each owner's own key, the SSRF address classification, Retry-After parsing, the
guarded resolver and the circuit-breaker metric (no tenant data in its labels)."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import socket
from typing import Any

import orjson
import pytest

from shared.core.metrics import MAX_TRACKED_CIRCUITS, Metrics
from workers.families.webhook import wire
from workers.families.webhook.circuit import CircuitState, circuit
from workers.families.webhook.handler import RETRY_AFTER_MAX_S, retry_after_s
from workers.families.webhook.outbound import AddressRefused, GuardedResolver, guarded_socket, refusal

BODY = b'{"id":"dlv_1","event":"order.paid"}'
# printf '%s' '1700000000.{"id":"dlv_1","event":"order.paid"}' | openssl dgst -sha256 -hmac whsec_test
EXPECTED = "d4b8a3fac812b56f706cb6ec338617dacac39e8b1a77b14ccf7ec4e88c04364f"
# openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt key:whsec_test -kdfopt "salt:conveyor webhook signing
#   keys" -kdfopt hexinfo:$(printf 'conveyor/webhook-signing-key/v1\0alice' | xxd -p | tr -d '\n') HKDF
ALICE_KEY_BYTES = "197dac2f1d48cf6030024361e410acd7801709e4b9b9b926436801304573ae02"
SECRET = "whsec_test"
NOW = 1700000010


def delivery(owner: str, body: bytes = BODY, *, secret: str = SECRET, at: int = 1700000000) -> dict[str, str]:
    """The headers Conveyor's sender puts on `owner`'s delivery of `body`."""
    return wire.signed_headers(secret, owner, body, timestamp=at)


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    assert wire.sign("whsec_test", 1700000000, BODY) == EXPECTED
    header = wire.signature_header("whsec_test", 1700000000, BODY)
    assert header == f"t=1700000000,k={wire.key_id('whsec_test')},v1={EXPECTED}"


def test_each_owner_signs_with_its_own_key_derived_from_the_secret_with_hkdf() -> None:
    alice = wire.signing_key(SECRET, "alice")

    assert alice.startswith("whsk_")
    assert base64.urlsafe_b64decode(alice.removeprefix("whsk_") + "=").hex() == ALICE_KEY_BYTES
    assert wire.signing_key(SECRET, "alice") == alice, "every process derives the same key"
    others = {wire.signing_key(SECRET, o) for o in ("bob", "Alice", "alice ", "")}
    assert alice not in others, "one key per owner"
    assert len(others) == 4
    assert wire.signing_key("another secret", "alice") != alice
    assert SECRET not in alice
    assert wire.key_id(alice).startswith("whk_")
    assert wire.key_id(alice) != wire.key_id(others.pop())
    assert wire.key_id(alice) not in alice


def test_a_delivery_verifies_only_for_its_own_owner() -> None:
    alice, bob = wire.signing_key(SECRET, "alice"), wire.signing_key(SECRET, "bob")
    bobs = delivery("bob")  # bob posts `invoice.paid` to alice's receiver

    assert wire.verify(BODY, bobs, bob, owner="bob", now=NOW)
    assert not wire.verify(BODY, bobs, alice, owner="alice", now=NOW), "alice's key does not check bob's"
    assert not wire.verify(BODY, bobs, bob, owner="alice", now=NOW), "it names bob, not alice"
    forged = {**bobs, wire.OWNER_HEADER: "alice"}
    assert not wire.verify(BODY, forged, alice, owner="alice", now=NOW), "renaming the owner does not help"
    assert wire.verify(BODY, delivery("alice"), alice, owner="alice", now=NOW)


def test_the_old_verify_without_an_owner_is_gone() -> None:
    header = wire.signature_header(SECRET, 1700000000, BODY)
    verify: Any = wire.verify

    with pytest.raises(TypeError):
        verify(SECRET, header, BODY)


def test_verify_accepts_a_fresh_signature_and_rejects_tampering() -> None:
    key = wire.signing_key(SECRET, "alice")
    headers = delivery("alice")
    header = headers[wire.SIGNATURE_HEADER]

    assert wire.verify(BODY, headers, key, owner="alice", now=NOW)
    assert wire.verify(BODY, {k.lower(): v for k, v in headers.items()}, key, owner="alice", now=NOW)
    assert not wire.verify(BODY + b" ", headers, key, owner="alice", now=NOW), "body changed"
    assert not wire.verify(BODY, headers, SECRET, owner="alice", now=NOW), "the secret is not the key"
    moved = {**headers, wire.SIGNATURE_HEADER: header.replace("t=1700000000", "t=1700000005")}
    assert not wire.verify(BODY, moved, key, owner="alice", now=NOW)
    assert not wire.verify(BODY, headers, key, owner="alice", now=NOW + 3600), "too old: a replay"
    unnamed = {wire.SIGNATURE_HEADER: header}
    assert not wire.verify(BODY, unnamed, key, owner="alice", now=NOW), "no Conveyor-Owner"
    for broken in ("", "v1=abc", f"t=x,v1={EXPECTED}", "t=1700000000", "t=\u00b2,v1=x", "t=1700000000,v1=\u00e9"):
        assert not wire.verify(BODY, {**headers, wire.SIGNATURE_HEADER: broken}, key, owner="alice", now=NOW)


def test_verify_accepts_any_of_several_signatures() -> None:
    key = wire.signing_key(SECRET, "alice")
    headers = delivery("alice")
    several = headers[wire.SIGNATURE_HEADER].replace("v1=", f"v1={'0' * 64},v1=")

    assert wire.verify(BODY, {**headers, wire.SIGNATURE_HEADER: several}, key, owner="alice", now=NOW)


@pytest.mark.parametrize(
    ("owner", "header"), [("alice", "alice"), ("apikey:ci-bot@example.com", "apikey:ci-bot@example.com"),
                          ("Zoë Smith", "Zo%C3%AB%20Smith"), ("100%", "100%25")],
)  # fmt: skip
def test_the_owner_header_is_the_owner_percent_encoded_only_where_a_header_needs_it(owner: str, header: str) -> None:
    headers = delivery(owner)

    assert headers[wire.OWNER_HEADER] == header
    assert wire.verify(BODY, headers, wire.signing_key(SECRET, owner), owner=owner, now=NOW)


def test_delivery_id_and_body_are_the_same_for_every_attempt_of_a_job() -> None:
    created = dt.datetime(2026, 11, 23, 19, 30, tzinfo=dt.UTC)
    first = wire.body(wire.delivery_id("job_abc"), "order.paid", {"n": 1}, created, owner="alice")

    assert wire.delivery_id("job_abc") == wire.delivery_id("job_abc") == "dlv_abc"
    assert first == wire.body(wire.delivery_id("job_abc"), "order.paid", {"n": 1}, created, owner="alice")
    assert orjson.loads(first) == {
        "id": "dlv_abc", "event": "order.paid", "created_at": "2026-11-23T19:30:00.000Z", "owner": "alice",
        "data": {"n": 1},
    }  # fmt: skip
    assert b" " not in first, "compact"
    assert wire.user_agent().startswith("Conveyor-Webhooks/")


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("fd12:3456::1", "unique-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address to refuse, not a bind
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not globally routable"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::a00:1", "private"),
        ("2002:7f00:1::", "loopback"),
    ],
)
def test_refused_addresses(address: str, reason: str) -> None:
    assert refusal(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


async def test_resolver_refuses_a_name_that_resolves_only_to_loopback() -> None:
    resolver = GuardedResolver()
    try:
        with pytest.raises(AddressRefused, match="loopback") as refused:
            await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
        assert "localhost" in str(refused.value)
        assert "WEBHOOK_ALLOW_PRIVATE=true" in str(refused.value)
    finally:
        await resolver.close()


def test_socket_factory_refuses_a_literal_private_address() -> None:
    with pytest.raises(AddressRefused, match="private") as refused:
        guarded_socket((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", 443)))
    assert "10.0.0.1" in str(refused.value)
    assert "WEBHOOK_ALLOW_PRIVATE=true allows private destinations (for development only)" in str(refused.value)
    sock = guarded_socket((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", 443)))
    sock.close()


def test_retry_after_in_seconds_or_as_an_http_date_within_bounds() -> None:
    now = dt.datetime(2026, 11, 23, 19, 30, tzinfo=dt.UTC)

    assert retry_after_s("7") == 7
    assert retry_after_s("0") == 1, "never sooner than a second"
    assert retry_after_s("999999") == RETRY_AFTER_MAX_S
    assert retry_after_s("Mon, 23 Nov 2026 19:30:30 GMT", now=now) == 30
    assert retry_after_s("Mon, 23 Nov 2026 19:00:00 GMT", now=now) == 1, "a date in the past: soon"
    assert retry_after_s("soon") is None
    assert retry_after_s(None) is None


def circuit_counts(metrics: Metrics) -> dict[str, float]:
    return {
        s.labels["state"]: s.value
        for family in metrics.registry.collect()
        if family.name == "conveyor_worker_webhook_circuits"
        for s in family.samples
    }


def test_circuits_are_counted_by_state_and_no_host_or_owner_is_a_label() -> None:
    metrics = Metrics()
    assert circuit_counts(metrics) == {"half_open": 0, "open": 0}, "both series from the start"
    alice, bob = circuit("alice", "hooks.alice-corp.example"), circuit("bob", "hooks.alice-corp.example")

    metrics.show_circuit(alice, CircuitState.OPEN)
    metrics.show_circuit(bob, CircuitState.HALF_OPEN)
    assert circuit_counts(metrics) == {"half_open": 1, "open": 1}
    text = metrics.render().decode()
    for tenant_data in ("alice-corp", "alice", "bob"):
        assert tenant_data not in text
    metrics.show_circuit(alice, CircuitState.OPEN)
    assert circuit_counts(metrics) == {"half_open": 1, "open": 1}, "a circuit counts once"
    metrics.show_circuit(bob, CircuitState.OPEN)
    assert circuit_counts(metrics) == {"half_open": 0, "open": 2}
    metrics.show_circuit(alice, CircuitState.CLOSED)
    metrics.show_circuit(bob, CircuitState.CLOSED)
    assert circuit_counts(metrics) == {"half_open": 0, "open": 0}


def test_the_circuits_a_process_keeps_in_mind_are_bounded_whatever_hosts_users_choose() -> None:
    metrics = Metrics()
    metrics.show_circuit(circuit("alice", "real.example"), CircuitState.OPEN, now=0.0)
    for n in range(MAX_TRACKED_CIRCUITS + 50):
        metrics.show_circuit(circuit("mallory", f"h{n}.example"), CircuitState.OPEN, now=0.5)
    metrics.show_circuit(circuit("mallory", "h0.example"), CircuitState.CLOSED, now=0.5)

    assert circuit_counts(metrics) == {"half_open": 0, "open": MAX_TRACKED_CIRCUITS}, "the oldest gave way"


def test_a_circuit_not_seen_for_a_while_is_no_longer_counted() -> None:
    metrics = Metrics()
    metrics.show_circuit(circuit("alice", "gone.example"), CircuitState.OPEN, now=0.0)
    metrics.show_circuit(circuit("alice", "busy.example"), CircuitState.OPEN, now=0.0)

    metrics.show_circuit(circuit("alice", "busy.example"), CircuitState.OPEN, now=299.0)
    assert circuit_counts(metrics)["open"] == 2
    metrics.show_circuit(circuit("alice", "busy.example"), CircuitState.OPEN, now=301.0)
    assert circuit_counts(metrics)["open"] == 1, "closed by another process, or never sent to again"
