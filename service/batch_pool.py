"""Token-budget grouping for the micro-batcher (service/batching.py): the prepared items of one queue,
pooled per operation in cost order, and how the next batch is formed from them.

A batch holds one operation, at most `max_batch` items and, with a cost, at most `max_batch_tokens`
padded tokens (items x the longest item; TEI's `max_batch_tokens`): it is grown around the oldest
item (so nothing starves) from its neighbours in length order, so that one long text does not pad a
batch of short ones (each step takes the neighbour that adds the least padding). One item over the
budget still goes, alone.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

_seq = itertools.count()


@dataclass(eq=False)
class QueuedItem:
    """One submitted input, from `submit` until its future is resolved."""

    op: str
    payload: Any
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)
    seq: int = field(default_factory=lambda: next(_seq))  # submission order: the oldest goes first
    prepared: Any = None
    cost: int = 1
    trace: Any = None  # the request's tracing context (tracing on)


@dataclass(eq=False)
class Batch:
    """Items of one operation that go through the model together."""

    op: str
    items: list[QueuedItem]
    collated: Any = None
    collate_error: Exception | None = None
    taken: float = 0.0  # when core took it, and ran the model (monotonic): for tracing
    run_started: float = 0.0
    run_ended: float = 0.0


class BatchPool:
    """The prepared items waiting for the model, per operation, sorted by (cost, seq). Not
    thread-safe: the queue calls it with its lock held."""

    def __init__(self, max_batch: int, max_batch_tokens: int | None) -> None:
        self.max_batch = max(1, max_batch)
        self.max_batch_tokens = max_batch_tokens
        self._pools: dict[str, list[tuple[int, int, QueuedItem]]] = {}  # op -> [(cost, seq, item)]
        self.size = 0  # items pooled (cancelled ones included until a batch is formed)

    def add(self, item: QueuedItem) -> None:
        bisect.insort(self._pools.setdefault(item.op, []), (item.cost, item.seq, item))
        self.size += 1

    def full(self) -> bool:
        """Whether a batch formed now would be full (more items cannot make it bigger)."""
        for pool in self._pools.values():
            if len(pool) >= self.max_batch:
                return True
            budget = self.max_batch_tokens
            if budget is not None and pool and len(pool) * pool[-1][0] >= budget:
                return True
        return False

    def oldest_enqueued(self) -> float:
        """When the oldest pooled item was submitted (monotonic); the pool must not be empty."""
        return min(entry[2].enqueued for pool in self._pools.values() for entry in pool)

    def take(self) -> Batch | None:
        """Form the next batch (None when only cancelled items were left): the op of the oldest
        item, grown around it in length order, each time by the neighbour that adds the least
        padding, within `max_batch` and `max_batch_tokens`."""
        self._drop_cancelled()
        if not self._pools:
            return None
        op = min(self._pools, key=lambda name: min(entry[1] for entry in self._pools[name]))
        pool = self._pools[op]
        anchor = min(range(len(pool)), key=lambda i: pool[i][1])
        lo = hi = anchor
        budget = self.max_batch_tokens
        while hi - lo + 1 < self.max_batch:
            size, longest = hi - lo + 1, pool[hi][0]
            # the padding each neighbour would add: a shorter one is padded up to the longest; a
            # longer one pads every item already in (pool is sorted by cost, so hi is the longest)
            left = longest - pool[lo - 1][0] if lo > 0 else None
            right = (pool[hi + 1][0] - longest) * size if hi + 1 < len(pool) else None
            if right is not None and budget is not None and (size + 1) * pool[hi + 1][0] > budget:
                right = None
            if left is not None and budget is not None and (size + 1) * longest > budget:
                left = None
            if left is None and right is None:
                break
            if right is None or (left is not None and left <= right):
                lo -= 1
            else:
                hi += 1
        taken = pool[lo : hi + 1]
        del pool[lo : hi + 1]
        if not pool:
            del self._pools[op]
        self.size -= len(taken)
        return Batch(op, [entry[2] for entry in sorted(taken, key=lambda e: e[1])])

    def _drop_cancelled(self) -> None:
        for op in list(self._pools):
            pool = self._pools[op]
            live = [entry for entry in pool if not entry[2].future.done()]
            self.size -= len(pool) - len(live)
            if live:
                self._pools[op] = live
            else:
                del self._pools[op]

    def drain(self) -> list[QueuedItem]:
        """Take every pooled item out (the queue is failing them)."""
        items = [entry[2] for pool in self._pools.values() for entry in pool]
        self._pools.clear()
        self.size = 0
        return items
