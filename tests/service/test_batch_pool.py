"""Token-budget grouping (service/batch_pool.py): which pooled items leave together, in what order."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from service.batch_pool import BatchPool, QueuedItem


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def pooled(
    pool: BatchPool, loop: asyncio.AbstractEventLoop, costs: list[int], op: str = "embed"
) -> list[QueuedItem]:
    """Items of these costs (tokens), submitted in this order, added to the pool."""
    items = []
    for cost in costs:
        item = QueuedItem(op, f"{op}/{cost}", loop.create_future(), loop, cost=cost)
        pool.add(item)
        items.append(item)
    return items


def taken(pool: BatchPool) -> list[QueuedItem]:
    """The items of the next batch (there must be one)."""
    batch = pool.take()
    assert batch is not None
    return batch.items


def test_a_batch_grows_around_the_oldest_item_by_the_least_padding(loop: asyncio.AbstractEventLoop) -> None:
    pool = BatchPool(max_batch=3, max_batch_tokens=None)
    oldest, long, short, middle = pooled(pool, loop, [10, 40, 2, 11])
    # from 10: taking 11 pads the 10 by 1 token, then 2 is padded by 9, where 40 would pad both by 29
    assert taken(pool) == [oldest, short, middle]  # in submission order
    assert pool.size == 1 and taken(pool) == [long]
    assert pool.size == 0 and pool.take() is None


def test_the_token_budget_bounds_items_times_the_longest(loop: asyncio.AbstractEventLoop) -> None:
    pool = BatchPool(max_batch=8, max_batch_tokens=30)
    items = pooled(pool, loop, [10, 10, 10, 10])
    assert pool.full()  # 4 x 10 > 30: more items cannot make the next batch bigger
    assert taken(pool) == items[:3]  # 3 x 10 = 30 fits, 4 x 10 does not
    assert not pool.full()


def test_one_item_over_the_budget_still_goes_alone(loop: asyncio.AbstractEventLoop) -> None:
    pool = BatchPool(max_batch=8, max_batch_tokens=16)
    (huge, small) = pooled(pool, loop, [100, 4])
    assert taken(pool) == [huge]
    assert taken(pool) == [small]


def test_a_batch_holds_one_operation_and_the_oldest_goes_first(loop: asyncio.AbstractEventLoop) -> None:
    pool = BatchPool(max_batch=8, max_batch_tokens=None)
    (head,) = pooled(pool, loop, [5], op="head:topic")
    embeds = pooled(pool, loop, [5, 6])
    assert pool.oldest_enqueued() == head.enqueued
    assert taken(pool) == [head]
    assert taken(pool) == embeds


def test_cancelled_items_are_dropped_and_drain_empties_the_pool(loop: asyncio.AbstractEventLoop) -> None:
    pool = BatchPool(max_batch=8, max_batch_tokens=None)
    first, second, third = pooled(pool, loop, [3, 3, 3])
    second.future.cancel()
    assert taken(pool) == [first, third]
    kept = pooled(pool, loop, [1, 2])
    kept[0].future.cancel()
    assert pool.drain() == kept and pool.size == 0 and pool.take() is None
    only_cancelled = pooled(pool, loop, [1])
    only_cancelled[0].future.cancel()
    assert pool.take() is None and pool.size == 0
