"""The embedded store's in-process indexes, kept in step with the database (several processes).

Every write to a collection bumps `collections.seq`; item rows carry the seq that wrote them and
`collection_removals` the keys each write removed. A process reads a collection only through
`InProcessIndexes.get`, which first applies every write newer than its index (`seq > ours`): so a
write acknowledged by any process is in the next search of every other one, with no polling delay,
at the cost of one indexed lookup per request. The writing process applies its own write directly
when no other write came between (`apply_own`). Removals are pruned `REMOVALS_KEPT` writes behind
(`sqlite.py`); an index older than the pruned history is loaded again from scratch, as is one of a
collection deleted and re-created under the same name.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np

from service.collections.base import MODALITIES, SearchTuning
from service.collections.index import ModalityIndex

LOAD_BATCH = 10_000
Transaction = Callable[[bool], AbstractContextManager[sqlite3.Connection]]


def vectors_from_blobs(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """(n, dim) float32 from the stored little-endian float32 BLOBs."""
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim).astype(np.float32)


@dataclass
class Loaded:
    """One collection's in-process index, as of database seq `seq`."""

    id: int
    seq: int
    indexes: dict[str, ModalityIndex]
    sync: threading.Lock = field(default_factory=threading.Lock)


def _add_rows(indexes: dict[str, ModalityIndex], rows: Sequence[sqlite3.Row], dim: int, build: bool) -> None:
    for modality in MODALITIES:
        mine = [r for r in rows if r["modality"] == modality]
        if mine:
            keys = np.asarray([r["key"] for r in mine], np.int64)
            indexes[modality].add(keys, vectors_from_blobs([r["vector"] for r in mine], dim), build=build)


class InProcessIndexes:
    def __init__(self, transaction: Transaction, tuning: SearchTuning) -> None:
        self._transaction = transaction  # (write: bool) -> a transaction on this thread's connection
        self.tuning = tuning
        self._loaded: dict[str, Loaded] = {}  # by collection name
        self._lock = threading.Lock()

    def all(self) -> list[Loaded]:
        with self._lock:
            return list(self._loaded.values())

    def drop(self, name: str) -> None:
        with self._lock:
            self._loaded.pop(name, None)

    def clear(self) -> None:
        with self._lock:
            self._loaded.clear()

    def _load(self, row: sqlite3.Row) -> Loaded:
        kind, dim = row["index_kind"], row["dim"]
        indexes = {m: ModalityIndex(dim, kind, self.tuning) for m in MODALITIES}
        with self._transaction(False) as conn:
            seq = conn.execute("SELECT seq FROM collections WHERE id = ?", (row["id"],)).fetchone()[0]
            cursor = conn.execute(
                "SELECT key, modality, vector FROM collection_items WHERE collection_id = ?", (row["id"],)
            )
            while batch := cursor.fetchmany(LOAD_BATCH):
                _add_rows(indexes, batch, dim, build=False)
        for index in indexes.values():
            index.ensure_graph()  # one graph build per modality, after the whole load
        return Loaded(row["id"], seq, indexes)

    def _catch_up(self, loaded: Loaded, dim: int) -> None:
        """Apply every write with seq > loaded.seq, read in one snapshot (caller holds loaded.sync)."""
        with self._transaction(False) as snap:
            seq = snap.execute("SELECT seq FROM collections WHERE id = ?", (loaded.id,)).fetchone()[0]
            removed = [
                r[0]
                for r in snap.execute(
                    "SELECT key FROM collection_removals WHERE collection_id = ? AND seq > ?",
                    (loaded.id, loaded.seq),
                )
            ]
            added = snap.execute(
                "SELECT key, modality, vector FROM collection_items WHERE collection_id = ? AND seq > ?",
                (loaded.id, loaded.seq),
            ).fetchall()
        for index in loaded.indexes.values():
            index.remove(removed)
        _add_rows(loaded.indexes, added, dim, build=True)
        loaded.seq = seq

    def get(self, name: str, row: sqlite3.Row) -> Loaded:
        """The collection's index (of the collection `row`), brought up to the row's seq."""
        with self._lock:
            loaded = self._loaded.get(name)
        if loaded is None or loaded.id != row["id"] or loaded.seq < row["pruned_seq"]:
            loaded = self._load(row)  # new to this process, re-created under the same name, or too far behind
            with self._lock:
                self._loaded[name] = loaded
        if loaded.seq < row["seq"]:
            with loaded.sync:
                if loaded.seq < row["seq"]:
                    self._catch_up(loaded, row["dim"])
        return loaded

    def apply_own(
        self,
        name: str,
        before: int,
        after: int,
        removed: list[int],
        added: dict[str, tuple[np.ndarray, np.ndarray]],
    ) -> None:
        """After our commit: apply our own write directly when the index was exactly at `before`."""
        with self._lock:
            loaded = self._loaded.get(name)
        if loaded is None:
            return
        with loaded.sync:
            if loaded.seq != before:
                return  # another write came between: the next read catches up from the database
            for index in loaded.indexes.values():
                index.remove(removed)
            for modality, (keys, vectors) in added.items():
                loaded.indexes[modality].add(keys, vectors)
            loaded.seq = after
