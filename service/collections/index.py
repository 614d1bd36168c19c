"""The embedded store's in-process vector index: one `ModalityIndex` per (collection, modality).

It holds the exact float32 vectors of the live items (a growable (capacity, dim) matrix, keyed by
the item's database key) and, for ANN, a FAISS HNSW graph over 8-bit scalar-quantised copies of
them (`IndexHNSWSQ`: a quarter of the memory of a second float copy). An ANN search takes
`top_k * rescore` candidates from the graph and re-scores them exactly with the float vectors.

The graph cannot delete: a removed or replaced key becomes a tombstone, skipped by searches. The
graph is (re)built in a background thread while exact search serves - when the index first needs
one, when the live vectors have doubled since the last build (the quantiser is re-trained on them),
or when tombstones outnumber live vectors - then swapped in after replaying the changes made
during the build. Nothing is ever rebuilt under a lock that writers wait on.

Thread safety: a readers-writer lock; searches share it, `add`/`remove` take it exclusively.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import repeat

import faiss
import numpy as np

from service.collections.base import SearchTuning

log = logging.getLogger("momo.service.collections")

EXACT_CANDIDATES = 20_000  # a filter that leaves at most this many items is scored exactly


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the k largest scores, best first."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


class ModalityIndex:
    def __init__(self, dim: int, kind: str, tuning: SearchTuning) -> None:
        self.dim = dim
        self.kind = kind
        self.tuning = tuning
        self.lock = RWLock()
        self._vectors = np.zeros((0, dim), np.float32)  # (capacity, dim); rows [0, size) are live
        self._keys = np.zeros(0, np.int64)  # (capacity,)
        self._size = 0
        self._pos: dict[int, int] = {}  # key -> row
        self._graph: faiss.Index | None = None  # IndexIDMap(IndexHNSWSQ) over keys
        self._dead: set[int] = set()  # keys in the graph that are no longer live
        self._built_size = 0  # live vectors when the graph was built
        self._journal: list[tuple[bool, np.ndarray]] | None = None  # (added?, keys) while building
        self._builder: threading.Thread | None = None
        self.builds = 0

    @property
    def size(self) -> int:
        return self._size

    @property
    def ann_ready(self) -> bool:
        return self._graph is not None

    # --- changes (callers hold no lock; these take the write lock) --------------------------------------
    def add(self, keys: np.ndarray, vectors: np.ndarray, *, build: bool = True) -> None:
        """Add new keys (never seen before) with their (n, dim) vectors; `build=False` while loading
        a collection in batches (then `ensure_graph` once)."""
        if len(keys) == 0:
            return
        with self.lock.write():
            need = self._size + len(keys)
            if need > len(self._keys):
                capacity = max(need, 2 * len(self._keys), 1024)
                grown = np.zeros((capacity, self.dim), np.float32)
                grown[: self._size] = self._vectors[: self._size]
                grown_keys = np.zeros(capacity, np.int64)
                grown_keys[: self._size] = self._keys[: self._size]
                self._vectors, self._keys = grown, grown_keys
            rows = slice(self._size, need)
            self._vectors[rows] = vectors
            self._keys[rows] = keys
            for offset, key in enumerate(keys.tolist()):
                self._pos[key] = self._size + offset
            self._size = need
            if self._graph is not None:
                self._graph.add_with_ids(vectors, keys)
            if self._journal is not None:
                self._journal.append((True, keys.copy()))
        if build:
            self.ensure_graph()

    def remove(self, keys: Iterable[int]) -> None:
        """Drop keys (unknown ones are ignored): the last row moves into the hole."""
        with self.lock.write():
            gone = []
            for key in keys:
                row = self._pos.pop(key, None)
                if row is None:
                    continue
                gone.append(key)
                last = self._size - 1
                if row != last:
                    moved = int(self._keys[last])
                    self._vectors[row] = self._vectors[last]
                    self._keys[row] = moved
                    self._pos[moved] = row
                self._size = last
            if not gone:
                return
            if self._graph is not None:
                self._dead.update(gone)
            if self._journal is not None:
                self._journal.append((False, np.asarray(gone, np.int64)))
        self.ensure_graph()

    # --- the graph -----------------------------------------------------------------------------------
    def _needs_graph(self) -> bool:
        if not self.tuning.use_ann(self.kind, self._size) or self._size == 0:
            return False
        if self._graph is None:
            return True
        return self._size >= 2 * max(self._built_size, 1) or len(self._dead) > self._size

    def ensure_graph(self) -> None:
        """Start a background (re)build when the index needs one (see the module docstring)."""
        with self.lock.write():
            if self._builder is not None or not self._needs_graph():
                return
            keys = self._keys[: self._size].copy()
            vectors = self._vectors[: self._size].copy()
            self._journal = []
            self._builder = threading.Thread(
                target=self._build, args=(keys, vectors), name="hnsw-build", daemon=True
            )
            self._builder.start()

    def _new_graph(self, vectors: np.ndarray) -> faiss.Index:
        hnsw = faiss.IndexHNSWSQ(
            self.dim,
            faiss.ScalarQuantizer.QT_8bit,  # type: ignore[arg-type]  # an enum value, typed as int
            self.tuning.m,
            faiss.METRIC_INNER_PRODUCT,
        )
        hnsw.hnsw.efConstruction = self.tuning.ef_construction
        hnsw.train(vectors)
        return faiss.IndexIDMap(hnsw)

    def _build(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        started = time.perf_counter()
        try:
            graph = self._new_graph(vectors)
            graph.add_with_ids(vectors, keys)
        except Exception:  # a failed build leaves exact search in place
            log.exception("building an HNSW graph of %d vectors failed; searches stay exact", len(keys))
            with self.lock.write():
                self._journal, self._builder = None, None
            return
        built = set(keys.tolist())
        with self.lock.write():
            # replay what changed during the build: keys added since (and still live) go in, keys
            # of the snapshot removed since become tombstones
            added = [k for a, changed in self._journal or [] if a for k in changed.tolist() if k in self._pos]
            dead = {k for a, changed in self._journal or [] if not a for k in changed.tolist() if k in built}
            if added:
                rows = np.asarray([self._pos[k] for k in added], np.int64)
                graph.add_with_ids(self._vectors[rows], np.asarray(added, np.int64))
            self._graph, self._dead, self._built_size = graph, dead, len(keys)
            self._journal, self._builder = None, None
            self.builds += 1
        log.info("HNSW graph of %d vectors built in %.1f s", len(keys), time.perf_counter() - started)
        self.ensure_graph()

    def wait_built(self, timeout: float) -> bool:
        """Block until no build runs (tests, benchmarks); True when a graph is in place."""
        deadline = time.monotonic() + timeout
        while (builder := self._builder) is not None and time.monotonic() < deadline:
            builder.join(max(0.0, deadline - time.monotonic()))
        return self._graph is not None and self._builder is None

    # --- search (read lock) --------------------------------------------------------------------------------
    def search(
        self, query: np.ndarray, k: int, allowed: set[int] | None = None, exact: bool = False
    ) -> list[tuple[int, float]]:
        """(key, score) of the k best live items, best first; `allowed` keeps only those keys."""
        query = np.ascontiguousarray(query, np.float32).reshape(-1)
        with self.lock.read():
            if self._size == 0 or (allowed is not None and not allowed):
                return []
            small_filter = allowed is not None and len(allowed) <= EXACT_CANDIDATES
            if self._graph is None or exact or small_filter or not self.tuning.use_ann(self.kind, self._size):
                return self._exact(query, k, allowed)
            return self._ann(query, k, allowed)

    def _exact(self, query: np.ndarray, k: int, allowed: set[int] | None) -> list[tuple[int, float]]:
        if allowed is not None and len(allowed) * 4 < self._size:  # few: score only those rows
            rows = np.fromiter(map(self._pos.get, allowed, repeat(-1)), np.int64, len(allowed))
            rows = rows[rows >= 0]  # keys of the other modality, or newer than this index
            scores = self._vectors[rows] @ query  # (m,)
            return [(int(self._keys[rows[i]]), float(scores[i])) for i in top_k(scores, k)]
        scores = self._vectors[: self._size] @ query  # (n,)
        if allowed is not None:
            keep = np.isin(self._keys[: self._size], np.fromiter(allowed, np.int64, len(allowed)))
            scores = np.where(keep, scores, -np.inf)
        return [(int(self._keys[i]), float(scores[i])) for i in top_k(scores, k) if np.isfinite(scores[i])]

    def _ann(self, query: np.ndarray, k: int, allowed: set[int] | None) -> list[tuple[int, float]]:
        assert self._graph is not None
        graph = self._graph
        live: Callable[[int], bool] = (
            (lambda key: key not in self._dead and key in allowed)
            if allowed is not None
            else (lambda key: key not in self._dead)
        )
        wanted = k * max(1, self.tuning.rescore)
        fetch = wanted + len(self._dead) if len(self._dead) < wanted else 2 * wanted
        while True:
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = max(self.tuning.ef_search, fetch)
            _scores, found = graph.search(query.reshape(1, -1), min(fetch, graph.ntotal), params=params)
            keys = [int(key) for key in found[0] if key >= 0 and live(int(key))]
            if len(keys) >= wanted or fetch >= graph.ntotal:
                break
            fetch *= 4  # tombstones or a filter took too many: ask for more
        rows = np.asarray([self._pos[key] for key in keys[:wanted]], np.int64)
        exact = self._vectors[rows] @ query  # (candidates,) re-scored with the float vectors
        return [(int(self._keys[rows[i]]), float(exact[i])) for i in top_k(exact, k)]
