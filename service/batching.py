"""Pipelined micro-batching (infinity's pre/core/post stages): a bounded queue per entry point.

Request handlers `submit` raw inputs (texts, pixel arrays, pairs) and await asyncio futures. Three
threads per queue work on them side by side:

- **pre** takes everything submitted since it last looked and runs one `prepare` call over it (the
  text queue tokenises with the tokenizer's batch call, which runs outside the GIL), then keeps the
  prepared items in a pool per operation, sorted by `cost` (tokens). While the inference worker is
  busy it forms the *next* batch as soon as it is full and collates it (`collate`: pad, stack), so
  the worker finds it ready.
- **core** runs the model: whenever it is free it takes the prepared batch, or forms one at once
  from the pool (continuous batching: under load batches leave full, a lone request pays no
  delay). `max_wait_s` > 0 lets a free worker linger that long for more items, unless every request
  in flight is already queued (`in_flight` hint).
- **post** turns each item's output into its result (`finish`) and resolves the futures on their
  event loop, one wake-up per batch and loop, while core already runs the next batch.

A batch holds one operation, at most `max_batch` items and, with a `cost`, at most
`max_batch_tokens` padded tokens, grown around the oldest item (service/batch_pool.py). What the
stages do outside the lock is service/batch_stages.py; this module owns the lock, the threads and
their hand-offs.

Failure isolation: `prepare` may return an exception instance for one item (it fails that item's
request); if a batched `prepare` or model call raises, its items are retried one by one, so a bad
input fails only its own request. A full queue raises `QueueFull` (-> 429 with Retry-After). If a
stage thread dies, every waiting and future request gets `WorkerDead` (-> 503) and `alive` is False
(-> /ready fails) — nothing hangs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue as stdqueue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from service.batch_pool import Batch, BatchPool, QueuedItem
from service.batch_stages import (
    CollateFn,
    FinishFn,
    PrepareFn,
    ProcessFn,
    as_list,
    collate_batch,
    deliver,
    deliver_many,
    finish_all,
    identity_prepare,
    output_as_result,
    prepare_all,
    run_batch,
    time_out,
    unloaded,
)

log = logging.getLogger("momo.service.batching")


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


class BatchQueue:
    """One bounded queue and its three stage threads (pre, core, post)."""

    def __init__(
        self,
        name: str,
        process: ProcessFn,
        *,
        max_batch: int,
        max_wait_s: float,
        capacity: int,
        prepare: PrepareFn | None = None,
        collate: CollateFn | None = None,
        finish: FinishFn | None = None,
        cost: Callable[[Any], int] | None = None,
        max_batch_tokens: int | None = None,
        on_batch: Callable[[str, int, float], None] | None = None,
        in_flight: Callable[[], int] | None = None,
        tracer: Any = None,
    ) -> None:
        self.name = name
        self._tracer = tracer  # service.tracing.BatchTracer, or None (tracing off)
        self._process = process
        self._prepare = prepare or identity_prepare
        self._collate = collate or as_list
        self._finish = finish or output_as_result
        self._cost = cost
        self.max_batch = max(1, max_batch)
        self.max_batch_tokens = max_batch_tokens if cost is not None else None
        self.max_wait_s = max(0.0, max_wait_s)
        self.capacity = max(1, capacity)
        self._on_batch = on_batch
        self._in_flight = in_flight
        # one lock, two conditions: a submit wakes pre alone (not core, which has nothing to do yet)
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # core waits on it
        self._pre_cond = threading.Condition(lock)  # pre waits on it
        self._raw: collections.deque[QueuedItem] = collections.deque()  # submitted, not prepared yet
        self._preparing = 0  # items inside a prepare call right now
        self._pool = BatchPool(self.max_batch, self.max_batch_tokens)  # prepared, waiting for core
        self._next: Batch | None = None  # formed (and collated) batch waiting for core
        self._core_busy = False
        self._stopping = False
        self._dead_reason: str | None = None
        self._kill = False
        self._post: stdqueue.SimpleQueue[tuple[Batch, list[Any]] | None] = stdqueue.SimpleQueue()
        stages = (("pre", self._pre_loop), ("core", self._core_loop), ("post", self._post_loop))
        self._threads = [
            threading.Thread(target=self._guard, args=(stage,), name=f"momo-{name}-{label}", daemon=True)
            for label, stage in stages
        ]
        self._core_thread = self._threads[1]
        self._ema_batch_s = 0.01  # smoothed batch time, for Retry-After

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    @property
    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads) and self._dead_reason is None and not self._stopping

    @property
    def depth(self) -> int:
        """Items waiting (submitted, being prepared, pooled or in the prepared batch)."""
        return (
            len(self._raw) + self._preparing + self._pool.size + (len(self._next.items) if self._next else 0)
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting work, finish what is queued, end the threads."""
        with self._cond:
            self._stopping = True
            self._wake_all()
        current = threading.current_thread()
        for thread in self._threads:
            if thread.is_alive() and thread is not current:
                thread.join(timeout)
        self._fail_pending(WorkerDead(self.name, "the model was unloaded"))
        if not any(t.is_alive() for t in self._threads):
            # Let go of the model: the stage functions are usually bound methods of the object that
            # owns this queue, a reference cycle that only the cyclic GC could break (and it never
            # looks at objects frozen by gc.freeze()). A stopped queue takes no work.
            self._process = unloaded
            self._prepare = identity_prepare
            self._collate = as_list
            self._finish = output_as_result
            self._cost = None
            self._in_flight = None

    def kill_for_test(self) -> None:
        """Test hook: make the inference thread die as an unexpected crash would."""
        with self._cond:
            self._kill = True
            self._wake_all()
        self._core_thread.join(5.0)

    # --- submitting (event loop side) ---------------------------------------------------------------
    def retry_after_s(self) -> float:
        batches_ahead = max(1, self.depth // self.max_batch)
        return max(1.0, batches_ahead * self._ema_batch_s)

    def submit_many(self, op: str, payloads: Sequence[Any]) -> list[asyncio.Future[Any]]:
        """Enqueue all payloads or none (QueueFull / WorkerDead). Call from the event loop."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._dead_reason is not None or not self._core_thread.is_alive():
                raise WorkerDead(self.name, self._dead_reason or "its inference worker is not running")
            if self._stopping:
                raise WorkerDead(self.name, "the model is being unloaded")
            if self.depth + len(payloads) > self.capacity:
                raise QueueFull(self.name, self.retry_after_s())
            futures: list[asyncio.Future[Any]] = []
            trace = self._tracer.capture() if self._tracer is not None else None
            for payload in payloads:
                future: asyncio.Future[Any] = loop.create_future()
                self._raw.append(QueuedItem(op, payload, future, loop, trace=trace))
                futures.append(future)
            self._pre_cond.notify()  # only pre has work to do
        return futures

    async def run(
        self, op: str, payloads: Sequence[Any], timeout: float, *, return_exceptions: bool = False
    ) -> list[Any]:
        """Submit and wait for every result: the first failure is raised, or with
        `return_exceptions` each item's exception takes its result's place. After `timeout`
        seconds the unfinished ones fail with TimeoutError (one timer, not a `wait_for` per call)."""
        if not payloads:
            return []
        futures = self.submit_many(op, payloads)
        timer = asyncio.get_running_loop().call_later(timeout, time_out, futures)
        try:
            if len(futures) == 1:
                try:
                    return [await futures[0]]
                except (TimeoutError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    if not return_exceptions:
                        raise
                    return [exc]
            results = list(await asyncio.gather(*futures, return_exceptions=return_exceptions))
            for result in results:
                if isinstance(result, TimeoutError):
                    raise result
            return results
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            timer.cancel()

    # --- the stage threads ----------------------------------------------------------------------------
    def _guard(self, stage: Callable[[], None]) -> None:
        try:
            stage()
        except BaseException as exc:
            reason = "the inference worker died (see the server log)"  # clients see this; the log has why
            log.exception("batch worker %s died: %r", self.name, exc)
            with self._cond:
                self._dead_reason = reason
                self._wake_all()
            self._fail_pending(WorkerDead(self.name, reason))
            if not isinstance(exc, Exception | _InjectedFault):
                raise

    def _wake_all(self) -> None:
        """Wake every stage thread (lock held): stop, a death, the test hook."""
        self._cond.notify_all()
        self._pre_cond.notify_all()

    def _check_kill(self) -> None:
        if self._kill:
            raise _InjectedFault(f"test hook killed the {self.name} worker")

    # pre: prepare everything submitted, keep the pool sorted, form a full batch ahead of core
    def _pre_loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._dead_reason is not None:
                        return
                    if self._raw:
                        taken = [item for item in self._raw if not item.future.done()]
                        self._raw.clear()
                        self._preparing = len(taken)
                        break
                    if self._next is None and self._core_busy and self._pool.full():
                        self._next = self._pool.take()
                        taken = []
                        break
                    if self._stopping:
                        self._cond.notify_all()
                        return
                    self._pre_cond.wait()
            if taken:
                self._prepare_items(taken)
            else:
                self._collate_next()

    def _prepare_items(self, items: list[QueuedItem]) -> None:
        prepared = prepare_all(self.name, self._prepare, items)
        failed: list[tuple[QueuedItem, BaseException]] = []
        with self._cond:
            dead = self._dead_reason
            for item, value in zip(items, prepared, strict=True):
                if dead is not None:
                    value = WorkerDead(self.name, dead)
                if isinstance(value, BaseException):
                    failed.append((item, value))
                    continue
                item.prepared = value
                item.cost = max(1, int(self._cost(value))) if self._cost is not None else 1
                self._pool.add(item)
            self._preparing = 0
            self._cond.notify_all()
        for item, error in failed:
            deliver(item, None, error)

    def _collate_next(self) -> None:
        batch = self._next
        if batch is None:
            return
        collate_batch(self._collate, batch)
        with self._cond:
            self._cond.notify_all()

    # core: run batches whenever free
    def _core_loop(self) -> None:
        try:
            while True:
                batch = self._take_for_core()
                if batch is None:
                    return
                try:
                    self._run_batch(batch)
                finally:
                    with self._cond:
                        self._core_busy = False
                        self._pre_cond.notify()
        finally:
            self._post.put(None)  # post delivers what core finished, then ends

    def _take_for_core(self) -> Batch | None:
        with self._cond:
            while True:
                self._check_kill()
                if self._dead_reason is not None:
                    return None
                batch = self._next
                if batch is not None and (batch.collated is not None or batch.collate_error is not None):
                    self._next = None
                    self._core_busy = True
                    self._pre_cond.notify()  # pre may form the one after it
                    return batch
                if batch is None and self._pool.size:
                    if self._linger():
                        continue
                    batch = self._pool.take()
                    if batch is not None:
                        self._core_busy = True
                        break
                    continue
                drained = not self._raw and not self._preparing and not self._pool.size and self._next is None
                if self._stopping and drained:
                    return None
                self._cond.wait()
        collate_batch(self._collate, batch)  # outside the lock; the pool keeps filling meanwhile
        return batch

    def _linger(self) -> bool:
        """With `max_wait_s`, wait (lock held) for a fuller batch; True when it waited."""
        if self.max_wait_s <= 0 or self._stopping or self._pool.full():
            return False
        waiting = self.depth
        if self._in_flight is not None and waiting >= self._in_flight():
            return False  # every request in flight is already queued: waiting cannot grow the batch
        remaining = self._pool.oldest_enqueued() + self.max_wait_s - time.monotonic()
        if remaining <= 0:
            return False
        self._cond.wait(remaining)
        return True

    def _run_batch(self, batch: Batch) -> None:
        started = time.perf_counter()
        ran = run_batch(self.name, self._process, self._collate, batch, self._post.put)
        if not ran:
            return
        elapsed = time.perf_counter() - started
        self._ema_batch_s = 0.8 * self._ema_batch_s + 0.2 * elapsed
        if self._on_batch is not None:
            with contextlib.suppress(Exception):
                self._on_batch(self.name, ran, elapsed)

    # post: results to futures
    def _post_loop(self) -> None:
        while True:
            job = self._post.get()
            if job is None:
                return
            batch, outputs = job
            if self._tracer is not None and batch.run_ended:
                with contextlib.suppress(Exception):
                    items = [(item.trace, item.enqueued) for item in batch.items]
                    self._tracer.record(
                        self.name, batch.op, items, batch.taken, batch.run_started, batch.run_ended
                    )
            deliver_many(finish_all(self._finish, batch, outputs))

    def _fail_pending(self, error: BaseException) -> None:
        with self._cond:
            pending = list(self._raw)
            self._raw.clear()
            pending.extend(self._pool.drain())
            if self._next is not None:
                pending.extend(self._next.items)
                self._next = None
        for item in pending:
            deliver(item, None, error)
