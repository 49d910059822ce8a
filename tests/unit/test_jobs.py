"""The job registry: policy arithmetic, registry integrity, descriptions."""

from __future__ import annotations

import random

import pytest

from shared.core.settings import JobTypesConfig
from shared.jobtypes import builtin_registry, builtin_specs
from shared.jobtypes.email import EMAIL_SEND
from shared.jobtypes.spec import Backoff, Registry
from workers.families import builtin_handlers
from workers.processes import PROCESSES


def test_exponential_backoff_doubles_up_to_the_cap() -> None:
    backoff = Backoff(kind="exponential", base_s=1, max_s=10, jitter=False)

    assert [backoff.delay_s(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_fixed_backoff_is_constant() -> None:
    assert {Backoff(kind="fixed", base_s=3, jitter=False).delay_s(n) for n in range(1, 5)} == {3}


def test_jitter_stays_within_half_to_full_delay() -> None:
    backoff = Backoff(kind="exponential", base_s=2, max_s=100, jitter=True)
    rng = random.Random(7)

    delays = [backoff.delay_s(3, rng) for _ in range(200)]

    assert all(4 <= d <= 8 for d in delays)
    assert len(set(delays)) > 100


def test_registry_refuses_a_type_defined_twice() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        Registry([EMAIL_SEND, EMAIL_SEND])


def test_every_builtin_type_has_exactly_one_handler_on_a_running_queue() -> None:
    handlers = builtin_handlers()
    queues = {p.queue for p in PROCESSES.values()}
    every_type = builtin_registry(JobTypesConfig(system_echo=True))  # system.echo too, in any ENVIRONMENT

    assert set(handlers) == {s.name for s in builtin_specs()}
    for name, handler in handlers.items():
        assert handler.spec is every_type.get(name)
        assert handler.spec.queue in queues


def test_descriptions_carry_schemas_and_policy() -> None:
    item = EMAIL_SEND.describe()

    assert item["type"] == "email.send"
    assert item["payload_schema"]["required"] == ["to", "subject"]
    assert "message_id" in item["result_schema"]["properties"]
    assert item["max_attempts"] == EMAIL_SEND.max_attempts
