"""In-process rate limits, the fallback while Redis db 0 is unreachable: the same GCRA per principal and the
same window of failures per IP as the Redis scripts, each store bounded in memory.

While Redis answers, each store mirrors the last state Redis returned for the keys this process saw, so a
switch to the fallback continues from the shared counts instead of handing every client a full bucket.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

# Keys (principals, IPs) each store keeps; past it the least recently used key is forgotten first. A key
# untouched for a whole window holds nothing a fresh key would not (a full bucket, a closed window).
MAX_KEYS: Final = 10_000

V = TypeVar("V")
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Verdict:
    """One GCRA decision, as the Redis script returns it: allowed, requests left, and in milliseconds the wait
    before the next request would be allowed (0 when allowed) and until the bucket is full again."""

    allowed: bool
    remaining: int
    retry_ms: int
    reset_ms: int


@dataclass(frozen=True, slots=True)
class Failures:
    """The failures counted in a key's window and the milliseconds left in that window."""

    count: int
    ttl_ms: int


class _Lru(Generic[V]):
    """A mapping that keeps at most `max_keys` keys, forgetting the least recently used one first."""

    def __init__(self, max_keys: int) -> None:
        self._max = max_keys
        self._items: OrderedDict[str, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> V | None:
        """The value of `key`, which counts as a use: a client being refused is not forgotten first."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)

    def pop(self, key: str) -> None:
        self._items.pop(key, None)


class LocalBuckets:
    """GCRA (a token bucket kept as one theoretical arrival time) per key: `limit` requests a `period_ms`, the
    bucket holding `limit`, exactly as the Redis script meters it, on this process's monotonic clock."""

    def __init__(self, *, max_keys: int = MAX_KEYS, clock: Clock = time.monotonic) -> None:
        self._tat: _Lru[float] = _Lru(max_keys)  # key -> theoretical arrival time, ms on `clock`
        self._clock = clock

    def __len__(self) -> int:
        return len(self._tat)

    def take(self, key: str, limit: int, period_ms: int) -> Verdict:
        """Admit one request of `key` or refuse it; a refused request takes nothing from the bucket."""
        now = self._clock() * 1000
        interval = period_ms / limit
        tat = max(self._tat.get(key) or now, now)
        new_tat = tat + interval
        allow_at = new_tat - period_ms
        if now < allow_at:
            return Verdict(False, 0, math.ceil(allow_at - now), math.ceil(tat - now))
        self._tat.put(key, new_tat)
        remaining = math.floor((period_ms - (new_tat - now)) / interval + 1e-9)
        return Verdict(True, max(0, remaining), 0, max(1, math.ceil(new_tat - now)))

    def mirror(self, key: str, reset_ms: int) -> None:
        """Adopt what Redis answered for `key`: its bucket is full again in `reset_ms`."""
        now = self._clock() * 1000
        self._tat.put(key, max(self._tat.get(key) or now, now + reset_ms))


class LocalFailures:
    """A fixed window of failures per key, opened by its first failure, as the Redis script counts them."""

    def __init__(self, *, max_keys: int = MAX_KEYS, clock: Clock = time.monotonic) -> None:
        self._windows: _Lru[tuple[int, float]] = _Lru(max_keys)  # key -> (failures, window end in ms on `clock`)
        self._clock = clock

    def __len__(self) -> int:
        return len(self._windows)

    def blocked_ms(self, key: str, limit: int) -> int:
        """Milliseconds until `key` may fail again without a 429: > 0 once its window holds more than `limit`."""
        window = self._windows.get(key)
        if window is None:
            return 0
        count, ends = window
        left = ends - self._clock() * 1000
        if left <= 0:
            self._windows.pop(key)
            return 0
        return math.ceil(left) if count > limit else 0

    def add(self, key: str, window_ms: int) -> Failures:
        """Count one failure of `key`, opening a window of `window_ms` if none is open."""
        now = self._clock() * 1000
        count, ends = self._windows.get(key) or (0, now)
        if ends <= now:
            count, ends = 0, now + window_ms
        self._windows.put(key, (count + 1, ends))
        return Failures(count + 1, math.ceil(ends - now))

    def mirror(self, key: str, failures: Failures) -> None:
        """Adopt what Redis counted for `key` (every replica's failures, in the shared window)."""
        self._windows.put(key, (failures.count, self._clock() * 1000 + failures.ttl_ms))
