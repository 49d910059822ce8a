"""Webhook signatures, the SSRF address classification, Retry-After parsing, the guarded resolver and the
circuit-breaker metric."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket

import orjson
import pytest

from shared import webhooks
from shared.circuit import CircuitState, circuit
from shared.metrics import MAX_CIRCUIT_HOSTS, Metrics
from workers.families.webhook import RETRY_AFTER_MAX_S, retry_after_s
from workers.outbound import AddressRefused, GuardedResolver, guarded_socket, refusal

BODY = b'{"id":"dlv_1","event":"order.paid"}'
# printf '%s' '1700000000.{"id":"dlv_1","event":"order.paid"}' | openssl dgst -sha256 -hmac whsec_test
EXPECTED = "d4b8a3fac812b56f706cb6ec338617dacac39e8b1a77b14ccf7ec4e88c04364f"


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    assert webhooks.sign("whsec_test", 1700000000, BODY) == EXPECTED
    assert webhooks.signature_header("whsec_test", 1700000000, BODY) == f"t=1700000000,v1={EXPECTED}"


def test_verify_accepts_a_fresh_signature_and_rejects_tampering() -> None:
    header = webhooks.signature_header("whsec_test", 1700000000, BODY)
    now = 1700000010

    assert webhooks.verify("whsec_test", header, BODY, now=now)
    assert not webhooks.verify("whsec_test", header, BODY + b" ", now=now), "body changed"
    assert not webhooks.verify("other", header, BODY, now=now), "wrong secret"
    assert not webhooks.verify("whsec_test", header.replace("t=1700000000", "t=1700000005"), BODY, now=now)
    assert not webhooks.verify("whsec_test", header, BODY, now=now + 3600), "too old: a replay"
    for broken in ("", "v1=abc", f"t=x,v1={EXPECTED}", "t=1700000000"):
        assert not webhooks.verify("whsec_test", broken, BODY, now=now)


def test_verify_accepts_any_of_several_signatures_during_a_secret_rotation() -> None:
    header = f"t=1700000000,v1={'0' * 64},v1={EXPECTED}"

    assert webhooks.verify("whsec_test", header, BODY, now=1700000000)


def test_delivery_id_and_body_are_the_same_for_every_attempt_of_a_job() -> None:
    created = dt.datetime(2026, 11, 23, 19, 30, tzinfo=dt.UTC)
    first = webhooks.body(webhooks.delivery_id("job_abc"), "order.paid", {"n": 1}, created, owner="alice")

    assert webhooks.delivery_id("job_abc") == webhooks.delivery_id("job_abc") == "dlv_abc"
    assert first == webhooks.body(webhooks.delivery_id("job_abc"), "order.paid", {"n": 1}, created, owner="alice")
    assert orjson.loads(first) == {
        "id": "dlv_abc", "event": "order.paid", "created_at": "2026-11-23T19:30:00.000Z", "owner": "alice",
        "data": {"n": 1},
    }  # fmt: skip
    assert b" " not in first, "compact"
    assert webhooks.user_agent().startswith("Conveyor-Webhooks/")


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


def circuit_series(metrics: Metrics) -> dict[str, float]:
    return {
        s.labels["host"]: s.value
        for family in metrics.registry.collect()
        if family.name == "conveyor_worker_circuit_breaker_state"
        for s in family.samples
    }


def test_circuit_metric_lists_only_hosts_with_a_circuit_not_closed() -> None:
    metrics = Metrics()
    alice, bob = circuit("alice", "a.example"), circuit("bob", "a.example")

    metrics.show_circuit("a.example", alice, CircuitState.OPEN)
    metrics.show_circuit("a.example", bob, CircuitState.HALF_OPEN)
    assert circuit_series(metrics) == {"a.example": 2}, "the worst circuit to the host"
    metrics.show_circuit("a.example", alice, CircuitState.CLOSED)
    assert circuit_series(metrics) == {"a.example": 1}
    metrics.show_circuit("a.example", bob, CircuitState.CLOSED)
    assert circuit_series(metrics) == {}, "a host whose circuits all closed has no series"


def test_circuit_metric_series_are_bounded_whatever_hosts_users_choose() -> None:
    metrics = Metrics()
    metrics.show_circuit("real.example", circuit("alice", "real.example"), CircuitState.OPEN, now=0.0)
    for n in range(MAX_CIRCUIT_HOSTS + 50):
        host = f"h{n}.example"
        metrics.show_circuit(host, circuit("mallory", host), CircuitState.OPEN, now=1.0 + n / 1000)
    metrics.show_circuit("real.example", circuit("alice", "real.example"), CircuitState.OPEN, now=2.0)

    shown = circuit_series(metrics)
    assert len(shown) == MAX_CIRCUIT_HOSTS
    assert "real.example" in shown, "the host seen least recently gives way, not the newest"
    assert "h0.example" not in shown


def test_a_circuit_not_seen_for_a_while_drops_out_of_the_metric() -> None:
    metrics = Metrics()
    metrics.show_circuit("gone.example", circuit("alice", "gone.example"), CircuitState.OPEN, now=0.0)
    metrics.show_circuit("busy.example", circuit("alice", "busy.example"), CircuitState.OPEN, now=0.0)

    metrics.show_circuit("busy.example", circuit("alice", "busy.example"), CircuitState.OPEN, now=299.0)
    assert set(circuit_series(metrics)) == {"gone.example", "busy.example"}
    metrics.show_circuit("busy.example", circuit("alice", "busy.example"), CircuitState.OPEN, now=301.0)
    assert circuit_series(metrics) == {"busy.example": 2}, "closed by another process, or never sent to again"
