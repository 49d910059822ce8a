"""Who may start how many more jobs on a queue: the rule of `shared.infra.fair_share`, without any service."""

from __future__ import annotations

from shared.infra.fair_share import allowances, owner_field, slots_per_owner


def test_one_owner_alone_is_never_limited() -> None:
    assert allowances({"alice": 50}, ["alice"], capacity=50, share=0.5) == {}


def test_a_waiting_owner_holds_back_whoever_has_its_share() -> None:
    limited = allowances({"alice": 50}, ["alice", "bob"], capacity=50, share=0.5)
    assert limited == {"alice": 0}, "bob waits with nothing running: alice starts nothing more, bob is free"


def test_two_hungry_owners_each_get_up_to_their_share() -> None:
    assert allowances({"alice": 10}, ["alice", "bob"], capacity=50, share=0.5) == {"alice": 15, "bob": 25}


def test_nobody_is_held_back_for_owners_that_already_have_their_share() -> None:
    # Both run their share and both wait: a free slot goes to whoever is first in priority order.
    assert allowances({"alice": 3, "bob": 3}, ["alice", "bob"], capacity=10, share=0.3) == {}


def test_every_owner_gets_at_least_one_slot() -> None:
    assert slots_per_owner(1, 0.5) == 1
    assert slots_per_owner(7, 0.5) == 3


def test_owners_are_spelled_as_in_the_job_record() -> None:
    assert owner_field('a"b\\c') == 'a\\"b\\\\c'
    assert owner_field("zoë") == "zoë"
