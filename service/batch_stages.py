"""What the micro-batcher's stages (service/batching.py) do with items outside the queue's lock:
prepare them (one call per operation), collate and run a batch through the model, finish each
output, and hand the results to the event loops the requests wait on.

Failure isolation lives here: a failing batched `prepare` or model call is retried item by item,
so a bad input fails only its own request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from service.batch_pool import Batch, QueuedItem

log = logging.getLogger("momo.service.batching")

# process(op, collated) -> one output per item, in order
ProcessFn = Callable[[str, Any], Sequence[Any]]
PrepareFn = Callable[[str, list[Any]], Sequence[Any]]
CollateFn = Callable[[str, list[Any]], Any]
FinishFn = Callable[[str, Any, Any], Any]
Outcome = tuple[QueuedItem, Any, BaseException | None]  # (item, result, error)


# the stage functions of a queue given none (and of a stopped one, which lets go of the model's)
def identity_prepare(op: str, payloads: list[Any]) -> Sequence[Any]:
    return payloads


def as_list(op: str, prepared: list[Any]) -> Any:
    return prepared


def output_as_result(op: str, prepared: Any, output: Any) -> Any:
    return output


def unloaded(op: str, payloads: Any) -> Sequence[Any]:
    raise RuntimeError("the queue was stopped")


def prepare_all(name: str, prepare: PrepareFn, items: list[QueuedItem]) -> list[Any]:
    """One `prepare` call per operation; a failing call is retried item by item. Returns each
    item's prepared value, or the exception that fails it, in order."""
    out: dict[int, Any] = {}
    groups: dict[str, list[QueuedItem]] = {}
    for item in items:
        groups.setdefault(item.op, []).append(item)
    for op, group in groups.items():
        try:
            values = list(prepare(op, [item.payload for item in group]))
            if len(values) != len(group):
                raise RuntimeError(f"{name}/{op}: prepared {len(values)} of {len(group)} inputs")
        except Exception:
            values = []
            for item in group:
                try:
                    (value,) = prepare(op, [item.payload])
                except Exception as exc:
                    value = exc
                values.append(value)
        for item, value in zip(group, values, strict=True):
            out[id(item)] = value
    return [out[id(item)] for item in items]


def collate_batch(collate: CollateFn, batch: Batch) -> None:
    """Collate (pad, stack) the batch's prepared items; a failure is kept for core to deliver."""
    try:
        batch.collated = collate(batch.op, [item.prepared for item in batch.items])
    except Exception as exc:
        batch.collate_error = exc


def run_batch(
    name: str,
    process: ProcessFn,
    collate: CollateFn,
    batch: Batch,
    finished: Callable[[tuple[Batch, list[Any]]], None],
) -> int:
    """Run the model over the batch's live items (cancelled ones are left out); `finished` gets
    (batch, outputs) for post, item by item when the batch failed and was retried singly. Returns
    how many items ran (0 when every request had gone)."""
    items = [item for item in batch.items if not item.future.done()]
    if not items:
        return 0
    batch.taken = time.monotonic()
    try:
        if batch.collate_error is not None:
            raise batch.collate_error
        if len(items) != len(batch.items):
            batch = Batch(batch.op, items, taken=batch.taken)  # without the cancelled ones
            collate_batch(collate, batch)
            if batch.collate_error is not None:
                raise batch.collate_error
        batch.run_started = time.monotonic()
        outputs = list(process(batch.op, batch.collated))
        batch.run_ended = time.monotonic()
        if len(outputs) != len(items):
            raise RuntimeError(f"{name}/{batch.op}: {len(outputs)} results for {len(items)} inputs")
    except Exception as exc:
        if len(items) == 1:
            deliver(items[0], None, exc)
        else:
            log.warning(
                "batch of %d on %s/%s failed (%r); retrying one by one", len(items), name, batch.op, exc
            )
            _run_singly(process, collate, batch.op, items, finished)
    else:
        finished((batch, outputs))
    return len(items)


def _run_singly(
    process: ProcessFn,
    collate: CollateFn,
    op: str,
    items: list[QueuedItem],
    finished: Callable[[tuple[Batch, list[Any]]], None],
) -> None:
    for item in items:
        try:
            (output,) = process(op, collate(op, [item.prepared]))
        except Exception as exc:
            deliver(item, None, exc)
        else:
            finished((Batch(op, [item]), [output]))


def finish_all(finish: FinishFn, batch: Batch, outputs: list[Any]) -> list[Outcome]:
    """Each item's result from its output (`finish`); a failing `finish` fails that item alone."""
    outcomes: list[Outcome] = []
    for item, output in zip(batch.items, outputs, strict=True):
        try:
            outcomes.append((item, finish(batch.op, item.prepared, output), None))
        except Exception as exc:
            outcomes.append((item, None, exc))
    return outcomes


# --- results to the event loops (futures are resolved on their own loop's thread) -------------------
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


def time_out(futures: list[asyncio.Future[Any]]) -> None:
    """Fail the unfinished futures with TimeoutError (on their loop: a `call_later` timer)."""
    for future in futures:
        if not future.done():
            future.set_exception(TimeoutError())


def deliver(item: QueuedItem, value: Any, error: BaseException | None) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        item.loop.call_soon_threadsafe(_resolve, item.future, value, error)


def deliver_many(outcomes: list[Outcome]) -> None:
    """One event-loop wake-up per loop for a whole batch (not one per item)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
    for item, value, error in outcomes:
        by_loop.setdefault(item.loop, []).append((item.future, value, error))
    for loop, resolutions in by_loop.items():
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve_all, resolutions)
