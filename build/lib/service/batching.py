"""Micro-batching (infinity style): a bounded queue per entry point, one inference thread each.

Request handlers `submit` already-preprocessed items (pixel arrays, token ids) and await asyncio
futures. The worker thread takes the oldest item, waits until `max_batch` items are queued or
`max_wait_s` has passed since that item arrived, runs one runtime call per operation in the batch
and resolves the futures on their event loop (one wake-up per batch). While the worker is busy the
queue fills, so under load batches leave full and without waiting; and when every request in
flight is already queued (`in_flight` hint), it does not wait at all — a lone request pays no
batching delay.

Failure isolation: if a batched call raises, its items are retried one by one so a bad input
fails only its own request. A full queue raises `QueueFull` (-> 429 with Retry-After). If the
worker thread dies, every waiting and future request gets `WorkerDead` (-> 503) and `alive` is
False (-> /ready fails) — nothing hangs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("momo.service.batching")

# process(op, payloads) -> one result per payload, in order
ProcessFn = Callable[[str, list[Any]], Sequence[Any]]


class QueueFull(Exception):
    def __init__(self, queue: str, retry_after_s: float) -> None:
        super().__init__(f"the {queue} queue is full")
        self.queue = queue
        self.retry_after_s = retry_after_s


class WorkerDead(Exception):
    def __init__(self, queue: str, reason: str = "its inference worker is not running") -> None:
        super().__init__(f"the {queue} queue cannot serve: {reason}")
        self.queue = queue


class _InjectedFault(BaseException):
    """Raised inside a worker thread by the test hook; escapes every handler and ends the thread."""


@dataclass(eq=False)
class _Item:
    op: str
    payload: Any
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled (client went away) or already failed
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _resolve_all(resolutions: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, error in resolutions:
        _resolve(future, value, error)


class BatchQueue:
    """One bounded queue and its inference thread."""

    def __init__(
        self,
        name: str,
        process: ProcessFn,
        *,
        max_batch: int,
        max_wait_s: float,
        capacity: int,
        on_batch: Callable[[str, int, float], None] | None = None,
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        self.name = name
        self._process = process
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max(0.0, max_wait_s)
        self.capacity = max(1, capacity)
        self._on_batch = on_batch
        self._in_flight = in_flight
        self._items: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._dead_reason: str | None = None
        self._kill = False
        self._thread = threading.Thread(target=self._run, name=f"momo-batch-{name}", daemon=True)
        self._ema_batch_s = 0.01  # smoothed batch time, for Retry-After

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self._dead_reason is None and not self._stopping

    @property
    def depth(self) -> int:
        return len(self._items)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting work, finish what is queued, end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._fail_pending(WorkerDead(self.name, "the model was unloaded"))

    def kill_for_test(self) -> None:
        """Test hook: make the worker thread die as an unexpected crash would."""
        with self._cond:
            self._kill = True
            self._cond.notify_all()
        self._thread.join(5.0)

    # --- submitting (event loop side) ---------------------------------------------------------------
    def retry_after_s(self) -> float:
        batches_ahead = max(1, self.depth // self.max_batch)
        return max(1.0, batches_ahead * self._ema_batch_s)

    def submit_many(self, op: str, payloads: Sequence[Any]) -> list[asyncio.Future[Any]]:
        """Enqueue all payloads or none (QueueFull / WorkerDead). Call from the event loop."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        with self._cond:
            if self._dead_reason is not None or not self._thread.is_alive():
                raise WorkerDead(self.name, self._dead_reason or "its inference worker is not running")
            if self._stopping:
                raise WorkerDead(self.name, "the model is being unloaded")
            if len(self._items) + len(payloads) > self.capacity:
                raise QueueFull(self.name, self.retry_after_s())
            for payload in payloads:
                future: asyncio.Future[Any] = loop.create_future()
                self._items.append(_Item(op, payload, future, loop))
                futures.append(future)
            self._cond.notify()
        return futures

    async def run(self, op: str, payloads: Sequence[Any], timeout: float) -> list[Any]:
        """Submit and wait for every result (the first failure is raised)."""
        if not payloads:
            return []
        futures = self.submit_many(op, payloads)
        try:
            if len(futures) == 1:
                return [await asyncio.wait_for(futures[0], timeout)]
            return list(await asyncio.wait_for(asyncio.gather(*futures), timeout))
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    # --- the worker thread ----------------------------------------------------------------------------
    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while True:
                if self._kill:
                    raise _InjectedFault(f"test hook killed the {self.name} worker")
                while self._items and self._items[0].future.done():  # cancelled while queued
                    self._items.popleft()
                if self._items:
                    break
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = self._items[0].enqueued + self.max_wait_s
            while len(self._items) < self.max_batch and not self._stopping and not self._kill:
                if self._in_flight is not None and len(self._items) >= self._in_flight():
                    break  # every request in flight is already queued: waiting cannot grow the batch
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._kill:
                raise _InjectedFault(f"test hook killed the {self.name} worker")
            batch: list[_Item] = []
            while self._items and len(batch) < self.max_batch:
                item = self._items.popleft()
                if not item.future.done():
                    batch.append(item)
            return batch

    def _run(self) -> None:
        batch: list[_Item] = []
        try:
            while True:
                next_batch = self._next_batch()
                if next_batch is None:
                    return
                batch = next_batch
                if batch:
                    self._run_batch(batch)
                batch = []
        except BaseException as exc:
            reason = f"the inference worker died ({type(exc).__name__}: {exc})"
            log.error("batch worker %s died: %r", self.name, exc)
            with self._cond:
                self._dead_reason = reason
            dead = WorkerDead(self.name, reason)
            for item in batch:
                self._deliver(item, None, dead)
            self._fail_pending(dead)
            if not isinstance(exc, Exception | _InjectedFault):
                raise

    def _run_batch(self, batch: list[_Item]) -> None:
        groups: dict[str, list[_Item]] = {}
        for item in batch:
            groups.setdefault(item.op, []).append(item)
        for op, items in groups.items():
            started = time.perf_counter()
            try:
                results = list(self._process(op, [item.payload for item in items]))
                if len(results) != len(items):
                    raise RuntimeError(f"{self.name}/{op}: {len(results)} results for {len(items)} inputs")
            except Exception as exc:
                if len(items) == 1:
                    self._deliver(items[0], None, exc)
                else:
                    log.warning(
                        "batch of %d on %s/%s failed (%r); retrying one by one",
                        len(items),
                        self.name,
                        op,
                        exc,
                    )
                    self._run_singly(op, items)
            else:
                self._deliver_many(
                    [(item, result, None) for item, result in zip(items, results, strict=True)]
                )
            elapsed = time.perf_counter() - started
            self._ema_batch_s = 0.8 * self._ema_batch_s + 0.2 * elapsed
            if self._on_batch is not None:
                with contextlib.suppress(Exception):
                    self._on_batch(self.name, len(items), elapsed)

    def _run_singly(self, op: str, items: list[_Item]) -> None:
        for item in items:
            try:
                (result,) = self._process(op, [item.payload])
            except Exception as exc:
                self._deliver(item, None, exc)
            else:
                self._deliver(item, result, None)

    @staticmethod
    def _deliver(item: _Item, value: Any, error: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            item.loop.call_soon_threadsafe(_resolve, item.future, value, error)

    @staticmethod
    def _deliver_many(outcomes: list[tuple[_Item, Any, BaseException | None]]) -> None:
        """One event-loop wake-up per loop for a whole batch (not one per item)."""
        by_loop: dict[
            asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]
        ] = {}
        for item, value, error in outcomes:
            by_loop.setdefault(item.loop, []).append((item.future, value, error))
        for loop, resolutions in by_loop.items():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve_all, resolutions)

    def _fail_pending(self, error: BaseException) -> None:
        with self._cond:
            pending = list(self._items)
            self._items.clear()
        for item in pending:
            self._deliver(item, None, error)
