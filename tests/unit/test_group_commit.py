"""shared.infra.group_commit: concurrent callers share groups, each gets its own result or error."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from shared.infra.group_commit import GroupCommit


class Recorder:
    def __init__(self, delay_s: float = 0.01) -> None:
        self.groups: list[list[int]] = []
        self.delay_s = delay_s
        self.gate = asyncio.Event()
        self.gate.set()

    async def flush(self, items: Sequence[int]) -> Sequence[int | BaseException]:
        self.groups.append(list(items))
        await self.gate.wait()
        await asyncio.sleep(self.delay_s)
        return [ValueError(f"odd {i}") if i % 7 == 3 else i * 10 for i in items]


async def test_a_lone_caller_is_written_at_once_and_a_crowd_in_few_groups() -> None:
    rec = Recorder()
    group = GroupCommit(rec.flush, max_items=50, max_in_flight=1)
    assert await group.submit(1) == 10
    assert rec.groups == [[1]]
    results = await asyncio.gather(*(group.submit(i) for i in range(100, 300)), return_exceptions=True)
    for i, r in zip(range(100, 300), results, strict=True):
        if i % 7 == 3:
            assert isinstance(r, ValueError)
            assert str(r) == f"odd {i}"
        else:
            assert r == i * 10
    # the first of the crowd went alone (nothing in flight), the rest waited and went 50 at a time
    assert [len(g) for g in rec.groups[1:]] == [1, 50, 50, 50, 49]


async def test_a_failed_statement_fails_every_item_of_its_group_only() -> None:
    calls = 0

    async def flush(items: Sequence[int]) -> Sequence[int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 2:
            raise ConnectionError("ledger down")
        return list(items)

    group: GroupCommit[int, int] = GroupCommit(flush, max_items=10, max_in_flight=1)
    results = await asyncio.gather(*(group.submit(i) for i in range(21)), return_exceptions=True)
    assert results[0] == 0
    assert all(isinstance(r, ConnectionError) for r in results[1:11])
    assert results[11:] == list(range(11, 21))


async def test_a_cancelled_caller_still_has_its_item_written() -> None:
    rec = Recorder()
    rec.gate.clear()
    group = GroupCommit(rec.flush, max_in_flight=1)
    waiter = asyncio.create_task(group.submit(5))
    await asyncio.sleep(0.005)
    waiter.cancel()
    rec.gate.set()
    await group.close()
    assert rec.groups == [[5]]
    assert waiter.cancelled()


async def test_linger_gathers_a_group_before_the_first_write() -> None:
    rec = Recorder(delay_s=0)
    group = GroupCommit(rec.flush, linger_s=0.02)
    await asyncio.gather(*(group.submit(i) for i in (1, 2, 4)), asyncio.sleep(0))
    assert rec.groups == [[1, 2, 4]]


def test_bad_sizes_are_refused() -> None:
    async def flush(items: Sequence[int]) -> Sequence[int]:
        return list(items)

    with pytest.raises(ValueError, match="at least"):
        GroupCommit(flush, max_items=0)
