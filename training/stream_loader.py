"""Order, split and load one stream, for any source, with exact resume.

The order of epoch ``e`` is a pure function of ``(seed, e)``, drawn from one generator per epoch:

1. the source's shards in a random order (a source held in RAM is a single shard);
2. consecutive runs of ``shuffle_shards`` shards form *windows*, the shuffle buffer;
3. the items of each window in a random order, window after window.

So at most one window of indices is in memory, and the DataLoader workers read a window's shards
while it lasts (a few shards open at a time), never the whole data set. A global batch is the next
``batch_size`` items of the order; an epoch's last partial batch is dropped. The global batch is cut
into ``M = world × A`` micro-batches of at most ``micro_batch_size`` items (``A`` accumulation passes
per rank, the fewest that fit), micro-batch ``m`` = ``batch[m::M]``; rank ``r`` runs micro-batches
``r·A … r·A + A − 1``,
and the rank's DataLoader workers take its micro-batches in turn, so every item is seen once per
epoch across ranks and workers. Nothing of this split enters the order or a micro-batch's content:
one process with ``A = 2`` runs exactly the micro-batches two processes with ``A = 1`` run.

Why indices rather than a stream of samples through a shuffle buffer (webdataset's pipeline): with
an order computed from ``(seed, epoch)``, the position ``(epoch, cursor)`` is all a checkpoint needs
(the shard, the offset in it and every permutation follow from it), a buffer's contents never have
to be saved or replayed, and a run resumes exactly even on another number of ranks or workers.
Batches prefetched by workers but not consumed are not counted: the position advances only when
the trainer takes a step's batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch.utils.data

from training.losses.base import Batch
from training.streams import Collate, StreamSource


class EpochOrder:
    """The visiting order of a source's items in each epoch (see the module docstring)."""

    def __init__(self, shard_lengths: list[int], shuffle_shards: int, seed: int):
        if shuffle_shards < 1:
            raise ValueError(f"shuffle_shards must be >= 1, not {shuffle_shards}")
        self.lengths = np.asarray(shard_lengths, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.shuffle_shards, self.seed = shuffle_shards, seed
        self._epoch = -1

    def _start_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        self._rng = np.random.default_rng([self.seed, epoch])
        # One shard needs no order (and drawing none keeps a RAM source a plain permutation).
        shards = self._rng.permutation(len(self.lengths)) if len(self.lengths) > 1 else np.zeros(1, np.int64)
        self._windows = [
            shards[i : i + self.shuffle_shards] for i in range(0, len(shards), self.shuffle_shards)
        ]
        self._window_ends = np.cumsum([int(self.lengths[w].sum()) for w in self._windows])
        self._window = -1
        self._items = np.empty(0, dtype=np.int64)

    def _load_window(self, window: int) -> None:
        if window < self._window:  # going back: redraw the epoch from its start
            self._start_epoch(self._epoch)
        while self._window < window:  # windows are drawn in turn from the epoch's generator
            self._window += 1
            shards = self._windows[self._window]
            items = np.concatenate(
                [np.arange(self.starts[s], self.starts[s] + self.lengths[s]) for s in shards]
            )
            self._items = items[self._rng.permutation(len(items))]

    def take(self, epoch: int, start: int, count: int) -> np.ndarray:
        """Items ``start … start + count − 1`` of epoch ``epoch``'s order -> (count,) int64."""
        if epoch != self._epoch:
            self._start_epoch(epoch)
        out: list[np.ndarray] = []
        position = start
        while position < start + count:
            window = int(np.searchsorted(self._window_ends, position, side="right"))
            self._load_window(window)
            window_start = int(self._window_ends[window - 1]) if window else 0
            stop = min(start + count, int(self._window_ends[window]))
            out.append(self._items[position - window_start : stop - window_start])
            position = stop
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


class _MicroBatches:
    """The batch sampler the DataLoader draws from: this rank's micro-batches, from a position on."""

    def __init__(self, loader: StreamLoader, epoch: int, cursor: int):
        self.loader, self.epoch, self.cursor = loader, epoch, cursor

    def __iter__(self) -> Iterator[list[int]]:
        loader = self.loader
        order = EpochOrder(loader.source.shard_lengths, loader.shuffle_shards, loader.seed)
        epoch, cursor = self.epoch, self.cursor
        while True:
            epoch, start, cursor = loader.advance(epoch, cursor)
            batch = order.take(epoch, start, loader.batch_size)
            for m in loader.own_micro_batches:
                yield batch[m :: loader.micro_batches].tolist()


def accumulation_steps(name: str, batch_size: int, world: int, micro_batch_size: int | None) -> int:
    """The fewest passes A per rank whose micro-batches (batch_size / (world × A) items, equal on
    every rank) are at most `micro_batch_size` (default: one pass)."""
    largest = micro_batch_size or batch_size
    for passes in range(max(1, -(-batch_size // (world * largest))), batch_size // world + 1):
        if batch_size % (world * passes) == 0:
            return passes
    raise ValueError(
        f"stream {name!r}: batch_size {batch_size} cannot be split into equal micro-batches of at most "
        f"{largest} over {world} rank(s)"
    )


class StreamLoader:
    """Endless batches of one stream: this rank's micro-batches of each global batch, built by
    `collate` (in `workers` DataLoader processes, or in this one when 0)."""

    def __init__(
        self,
        name: str,
        source: StreamSource,
        collate: Collate,
        batch_size: int,
        seed: int,
        *,
        rank: int = 0,
        world: int = 1,
        micro_batch_size: int | None = None,
        workers: int = 0,
        shuffle_shards: int = 1,
    ):
        if len(source) < batch_size:
            raise ValueError(
                f"stream {name!r} has {len(source)} items, fewer than its batch size {batch_size}"
            )
        self.name, self.source, self.collate = name, source, collate
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.workers, self.shuffle_shards = workers, shuffle_shards
        self.accumulation = accumulation_steps(name, batch_size, world, micro_batch_size)  # A per rank
        self.micro_batches = world * self.accumulation  # M, over all ranks
        self.own_micro_batches = range(rank * self.accumulation, (rank + 1) * self.accumulation)
        self.epoch, self.cursor, self.skipped = 0, 0, 0
        self._iterator: Iterator[Batch] | None = None

    def advance(self, epoch: int, cursor: int) -> tuple[int, int, int]:
        """(epoch, start of the next global batch, cursor after it) from a position."""
        if cursor + self.batch_size > len(self.source):
            epoch, cursor = epoch + 1, 0
        return epoch, cursor, cursor + self.batch_size

    def next_step(self) -> list[tuple[int, Batch]]:
        """This rank's micro-batches of the next global batch, each with its global index m."""
        if self._iterator is None:
            self._iterator = iter(
                torch.utils.data.DataLoader(
                    self.source,  # type: ignore[arg-type]
                    batch_sampler=_MicroBatches(self, self.epoch, self.cursor),
                    collate_fn=self.collate,
                    num_workers=self.workers,
                    prefetch_factor=2 if self.workers else None,  # batches ready per worker
                )
            )
        batches = [next(self._iterator) for _ in self.own_micro_batches]
        self.epoch, _, self.cursor = self.advance(self.epoch, self.cursor)
        self.skipped += sum(int(b.meta.get("skipped", 0)) for b in batches)
        return list(zip(self.own_micro_batches, batches, strict=True))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.close()
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.skipped = int(state.get("skipped", 0))

    def close(self) -> None:
        """Stop the workers (the next `next_step` starts new ones at the current position)."""
        self._iterator = None
