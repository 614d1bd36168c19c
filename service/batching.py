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
`max_batch_tokens` padded tokens (items x the longest item; TEI's `max_batch_tokens`): it is grown
around the oldest item (so nothing starves) from its neighbours in length order, so that one long
text does not pad a batch of short ones (each step takes the neighbour that adds the least padding).
One item over the budget still goes, alone.

Failure isolation: `prepare` may return an exception instance for one item (it fails that item's
request); if a batched `prepare` or model call raises, its items are retried one by one, so a bad
input fails only its own request. A full queue raises `QueueFull` (-> 429 with Retry-After). If a
stage thread dies, every waiting and future request gets `WorkerDead` (-> 503) and `alive` is False
(-> /ready fails) — nothing hangs.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import itertools
import logging
import queue as stdqueue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("momo.service.batching")

# process(op, collated) -> one output per item, in order
ProcessFn = Callable[[str, Any], Sequence[Any]]
PrepareFn = Callable[[str, list[Any]], Sequence[Any]]
CollateFn = Callable[[str, list[Any]], Any]
FinishFn = Callable[[str, Any, Any], Any]
_seq = itertools.count()


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
    seq: int = field(default_factory=lambda: next(_seq))
    prepared: Any = None
    cost: int = 1
    trace: Any = None  # the request's tracing context (tracing on)


@dataclass(eq=False)
class _Batch:
    op: str
    items: list[_Item]
    collated: Any = None
    collate_error: Exception | None = None
    taken: float = 0.0  # when core took it, and ran the model (monotonic): for tracing
    run_started: float = 0.0
    run_ended: float = 0.0


def _unloaded(op: str, payloads: Any) -> Sequence[Any]:
    raise RuntimeError("the queue was stopped")


def _identity_prepare(op: str, payloads: list[Any]) -> Sequence[Any]:
    return payloads


def _as_list(op: str, prepared: list[Any]) -> Any:
    return prepared


def _output(op: str, prepared: Any, output: Any) -> Any:
    return output


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled (client went away) or already failed
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _time_out(futures: list[asyncio.Future[Any]]) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(TimeoutError())


def _resolve_all(resolutions: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, error in resolutions:
        _resolve(future, value, error)


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
        self._prepare = prepare or _identity_prepare
        self._collate = collate or _as_list
        self._finish = finish or _output
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
        self._raw: collections.deque[_Item] = collections.deque()  # submitted, not prepared yet
        self._preparing = 0  # items inside a prepare call right now
        self._pools: dict[str, list[tuple[int, int, _Item]]] = {}  # op -> [(cost, seq, item)], by cost
        self._pooled = 0
        self._next: _Batch | None = None  # formed (and collated) batch waiting for core
        self._core_busy = False
        self._stopping = False
        self._dead_reason: str | None = None
        self._kill = False
        self._post: stdqueue.SimpleQueue[tuple[_Batch, Sequence[Any]] | None] = stdqueue.SimpleQueue()
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
        return len(self._raw) + self._preparing + self._pooled + (len(self._next.items) if self._next else 0)

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
            self._process = _unloaded
            self._prepare = _identity_prepare
            self._collate = _as_list
            self._finish = _output
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
                self._raw.append(_Item(op, payload, future, loop, trace=trace))
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
        timer = asyncio.get_running_loop().call_later(timeout, _time_out, futures)
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
                    if self._next is None and self._core_busy and self._pool_full():
                        self._next = self._form_locked()
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

    def _prepare_items(self, items: list[_Item]) -> None:
        prepared = self._call_prepare(items)
        failed: list[tuple[_Item, BaseException]] = []
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
                bisect.insort(self._pools.setdefault(item.op, []), (item.cost, item.seq, item))
                self._pooled += 1
            self._preparing = 0
            self._cond.notify_all()
        for item, error in failed:
            self._deliver(item, None, error)

    def _call_prepare(self, items: list[_Item]) -> list[Any]:
        """One `prepare` call per operation; a failing call is retried item by item."""
        out: dict[int, Any] = {}
        groups: dict[str, list[_Item]] = {}
        for item in items:
            groups.setdefault(item.op, []).append(item)
        for op, group in groups.items():
            try:
                values = list(self._prepare(op, [item.payload for item in group]))
                if len(values) != len(group):
                    raise RuntimeError(f"{self.name}/{op}: prepared {len(values)} of {len(group)} inputs")
            except Exception:
                values = []
                for item in group:
                    try:
                        (value,) = self._prepare(op, [item.payload])
                    except Exception as exc:
                        value = exc
                    values.append(value)
            for item, value in zip(group, values, strict=True):
                out[id(item)] = value
        return [out[id(item)] for item in items]

    def _pool_full(self) -> bool:
        """Whether a batch formed now would be full (more items cannot make it bigger)."""
        for pool in self._pools.values():
            if len(pool) >= self.max_batch:
                return True
            budget = self.max_batch_tokens
            if budget is not None and pool and len(pool) * pool[-1][0] >= budget:
                return True
        return False

    def _form_locked(self) -> _Batch | None:
        """Take the next batch from the pools (call with the lock held): the op of the oldest item,
        grown around it in length order, each time by the neighbour that adds the least padding,
        within `max_batch` and `max_batch_tokens`."""
        for op in list(self._pools):
            pool = self._pools[op]
            live = [entry for entry in pool if not entry[2].future.done()]
            self._pooled -= len(pool) - len(live)
            if live:
                self._pools[op] = live
            else:
                del self._pools[op]
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
        self._pooled -= len(taken)
        return _Batch(op, [entry[2] for entry in sorted(taken, key=lambda e: e[1])])

    def _collate_next(self) -> None:
        batch = self._next
        if batch is None:
            return
        self._collate_batch(batch)
        with self._cond:
            self._cond.notify_all()

    def _collate_batch(self, batch: _Batch) -> None:
        try:
            batch.collated = self._collate(batch.op, [item.prepared for item in batch.items])
        except Exception as exc:
            batch.collate_error = exc

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

    def _take_for_core(self) -> _Batch | None:
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
                if batch is None and self._pooled:
                    if self._linger():
                        continue
                    batch = self._form_locked()
                    if batch is not None:
                        self._core_busy = True
                        break
                    continue
                drained = not self._raw and not self._preparing and not self._pooled and self._next is None
                if self._stopping and drained:
                    return None
                self._cond.wait()
        self._collate_batch(batch)  # outside the lock; the pool keeps filling meanwhile
        return batch

    def _linger(self) -> bool:
        """With `max_wait_s`, wait (lock held) for a fuller batch; True when it waited."""
        if self.max_wait_s <= 0 or self._stopping or self._pool_full():
            return False
        waiting = self.depth
        if self._in_flight is not None and waiting >= self._in_flight():
            return False  # every request in flight is already queued: waiting cannot grow the batch
        oldest = min(entry[2].enqueued for pool in self._pools.values() for entry in pool)
        remaining = oldest + self.max_wait_s - time.monotonic()
        if remaining <= 0:
            return False
        self._cond.wait(remaining)
        return True

    def _run_batch(self, batch: _Batch) -> None:
        items = [item for item in batch.items if not item.future.done()]
        if not items:
            return
        batch.taken = time.monotonic()
        started = time.perf_counter()
        try:
            if batch.collate_error is not None:
                raise batch.collate_error
            if len(items) != len(batch.items):
                batch = _Batch(batch.op, items)
                self._collate_batch(batch)
                if batch.collate_error is not None:
                    raise batch.collate_error
            batch.run_started = time.monotonic()
            outputs = list(self._process(batch.op, batch.collated))
            batch.run_ended = time.monotonic()
            if len(outputs) != len(items):
                raise RuntimeError(f"{self.name}/{batch.op}: {len(outputs)} results for {len(items)} inputs")
        except Exception as exc:
            if len(items) == 1:
                self._deliver(items[0], None, exc)
            else:
                log.warning(
                    "batch of %d on %s/%s failed (%r); retrying one by one",
                    len(items),
                    self.name,
                    batch.op,
                    exc,
                )
                self._run_singly(batch.op, items)
        else:
            self._post.put((batch, outputs))
        elapsed = time.perf_counter() - started
        self._ema_batch_s = 0.8 * self._ema_batch_s + 0.2 * elapsed
        if self._on_batch is not None:
            with contextlib.suppress(Exception):
                self._on_batch(self.name, len(items), elapsed)

    def _run_singly(self, op: str, items: list[_Item]) -> None:
        for item in items:
            try:
                (output,) = self._process(op, self._collate(op, [item.prepared]))
            except Exception as exc:
                self._deliver(item, None, exc)
            else:
                self._post.put((_Batch(op, [item]), [output]))

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
            outcomes: list[tuple[_Item, Any, BaseException | None]] = []
            for item, output in zip(batch.items, outputs, strict=True):
                try:
                    outcomes.append((item, self._finish(batch.op, item.prepared, output), None))
                except Exception as exc:
                    outcomes.append((item, None, exc))
            self._deliver_many(outcomes)

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
            pending = list(self._raw)
            self._raw.clear()
            for pool in self._pools.values():
                pending.extend(entry[2] for entry in pool)
            self._pools.clear()
            self._pooled = 0
            if self._next is not None:
                pending.extend(self._next.items)
                self._next = None
        for item in pending:
            self._deliver(item, None, error)
