"""The in-process fallback limits: the GCRA and the failure windows of the Redis scripts, bounded in memory."""

from __future__ import annotations

from gateway.security.local_limits import Failures, LocalBuckets, LocalFailures, Verdict

MINUTE_MS = 60_000


class Clock:
    """A monotonic clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_holds_the_limit_and_refills_one_request_per_interval() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock=clock)

    burst = [buckets.take("alice", 3, MINUTE_MS) for _ in range(3)]
    refused = buckets.take("alice", 3, MINUTE_MS)
    clock.now += 19.9
    still_refused = buckets.take("alice", 3, MINUTE_MS).allowed
    clock.now += 0.1
    refilled = buckets.take("alice", 3, MINUTE_MS)

    assert [v.allowed for v in burst] == [True, True, True]
    assert [v.remaining for v in burst] == [2, 1, 0]
    assert [v.reset_ms for v in burst] == [20_000, 40_000, 60_000]
    assert refused == Verdict(allowed=False, remaining=0, retry_ms=20_000, reset_ms=60_000)
    assert still_refused is False  # a refused request took nothing, so the wait did not grow
    assert refilled == Verdict(allowed=True, remaining=0, retry_ms=0, reset_ms=60_000)
    assert buckets.take("bob", 3, MINUTE_MS).remaining == 2  # per key


def test_a_limit_too_large_to_meter_still_admits() -> None:
    buckets = LocalBuckets(clock=Clock())

    verdicts = [buckets.take("alice", 1_000_000_000, MINUTE_MS) for _ in range(1000)]

    assert all(v.allowed for v in verdicts)
    assert all(v.reset_ms >= 1 for v in verdicts)


def test_a_bucket_goes_on_from_what_redis_answered_and_never_forgets_local_use() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock=clock)

    buckets.mirror("alice", 40_000)  # Redis: two of three used
    after_mirror = [buckets.take("alice", 3, MINUTE_MS).allowed for _ in range(2)]
    buckets.mirror("alice", 1)  # an older, lower answer (e.g. a flushed cache) does not hand out a full bucket
    after_lower = buckets.take("alice", 3, MINUTE_MS).allowed

    assert after_mirror == [True, False]
    assert after_lower is False


def test_failures_open_a_window_and_block_past_the_limit_until_it_ends() -> None:
    clock = Clock()
    failures = LocalFailures(clock=clock)

    counted = [failures.add("192.0.2.1", MINUTE_MS) for _ in range(3)]
    blocked = failures.blocked_ms("192.0.2.1", 2)
    not_yet = failures.blocked_ms("192.0.2.1", 3)
    clock.now += 30
    later = failures.blocked_ms("192.0.2.1", 2)
    clock.now += 30
    after_window = failures.blocked_ms("192.0.2.1", 2)
    fresh = failures.add("192.0.2.1", MINUTE_MS)

    assert counted == [Failures(1, 60_000), Failures(2, 60_000), Failures(3, 60_000)]
    assert (blocked, not_yet, later, after_window) == (60_000, 0, 30_000, 0)
    assert fresh == Failures(1, 60_000)
    assert failures.blocked_ms("192.0.2.2", 0) == 0


def test_failures_adopt_the_shared_count() -> None:
    clock = Clock()
    failures = LocalFailures(clock=clock)

    failures.mirror("192.0.2.1", Failures(31, 12_000))  # every replica's failures, as Redis counted them

    assert failures.blocked_ms("192.0.2.1", 30) == 12_000
    assert failures.add("192.0.2.1", MINUTE_MS) == Failures(32, 12_000)


def test_a_spray_of_keys_cannot_grow_the_stores_past_their_bound() -> None:
    clock = Clock()
    buckets, failures = LocalBuckets(max_keys=100, clock=clock), LocalFailures(max_keys=100, clock=clock)

    buckets.take("regular", 3, MINUTE_MS)
    failures.mirror("203.0.113.9", Failures(31, MINUTE_MS))
    for i in range(10_000):
        buckets.take(f"sprayed-{i}", 3, MINUTE_MS)
        failures.add(f"198.51.100.{i}", MINUTE_MS)
        if i % 50 == 0:  # keys in use stay known, refused or not
            buckets.take("regular", 3, MINUTE_MS)
            failures.blocked_ms("203.0.113.9", 30)

    assert (len(buckets), len(failures)) == (100, 100)
    assert buckets.take("regular", 3, MINUTE_MS).allowed is False
    assert failures.blocked_ms("203.0.113.9", 30) > 0
