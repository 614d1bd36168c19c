"""The embedded store's in-process index: a graph build runs beside writes and searches, and what
changed meanwhile is in the graph once it is swapped in."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from service.collections.base import SearchTuning
from service.collections.index import ModalityIndex
from tests.service.collections.test_store import DIM, clustered


class HeldBuild(ModalityIndex):
    """Builds wait until the test lets them go, so the test can write during a build."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.started = threading.Event()
        self.release = threading.Event()

    def _new_graph(self, vectors: np.ndarray) -> Any:
        self.started.set()
        assert self.release.wait(60)
        return super()._new_graph(vectors)


def test_changes_during_a_build_reach_the_graph() -> None:
    vectors = clustered(3000, seed=11)
    index = HeldBuild(DIM, "hnsw", SearchTuning(ef_search=64, rescore=2))
    keys = np.arange(1000, dtype=np.int64)
    index.add(keys, vectors[:1000])
    assert index.started.wait(30)
    # searches stay exact while the graph builds; writes go on
    assert index.search(vectors[5], 1)[0][0] == 5 and not index.ann_ready
    index.add(np.arange(1000, 1500, dtype=np.int64), vectors[1000:1500])
    index.remove([5, 1200])
    index.release.set()
    assert index.wait_built(60) and index.builds >= 1
    for key in (7, 1100, 1499):  # in the snapshot or added during the build: found by the graph
        assert index.search(vectors[key], 1)[0][0] == key
    found = {k for k, _ in index.search(vectors[5], 50)} | {k for k, _ in index.search(vectors[1200], 50)}
    assert not found & {5, 1200}
    # the live set doubled since the build: the graph is rebuilt on the new data
    index.add(np.arange(1500, 3000, dtype=np.int64), vectors[1500:3000])
    assert index.wait_built(60) and index.builds >= 2
    assert index.search(vectors[2999], 1)[0][0] == 2999
    exact = index.search(vectors[42], 10, exact=True)
    approximate = index.search(vectors[42], 10)
    assert len({k for k, _ in exact} & {k for k, _ in approximate}) >= 8
