"""The store interface on both backends, without HTTP: filters, counts, limits, ANN (recall,
tombstones, the threshold), concurrency, two stores on one database, copying."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from service.collections import CollectionError, CollectionStore, Item, NewItem, SearchTuning, create_store
from service.collections import sqlite as sqlite_backend

DIM = 16


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, seed: int, dim: int = DIM, clusters: int = 20) -> np.ndarray:
    """Unit vectors around `clusters` random centres (embeddings are clustered, not uniform)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return unit(centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim)))


def items(vectors: np.ndarray, prefix: str = "x", modality: str = "text") -> list[NewItem]:
    return [NewItem(f"{prefix}{i}", modality, v, {"i": i, "odd": i % 2 == 1}) for i, v in enumerate(vectors)]


def opened(url: str, **tuning: int) -> CollectionStore:
    store = create_store(url, fsync=False, max_items=10_000, tuning=SearchTuning(**tuning))
    store.open()
    return store


@pytest.fixture()
def store(collections_url: str) -> Iterator[CollectionStore]:
    s = opened(collections_url)
    yield s
    s.close()


def test_filters_compare_json_values(store: CollectionStore) -> None:
    store.create("c", DIM, "m:v1")
    v = clustered(6, seed=1)
    metadata = [
        {"n": 1, "tags": ["a", "b"], "spec": {"x": 1, "y": 2}},
        {"n": 1.0, "tags": ["a"]},
        {"n": 2, "tags": ["a", "b", "c"], "spec": {"x": 1}},
        {"n": True},
        {"n": None},
        {},
    ]
    store.upsert("c", [NewItem(f"m{i}", "text", v[i], md) for i, md in enumerate(metadata)])

    def ids(flt: dict[str, object]) -> set[str]:
        return {h.id for h in store.search("c", v[0], 10, metadata=flt)}

    assert ids({"n": 1}) == {"m0", "m1"}  # 1 == 1.0, as JSON compares numbers; true is not 1
    assert ids({"n": True}) == {"m3"}
    assert ids({"n": None}) == {"m4"}  # an explicit null, not a missing key
    assert ids({"tags": ["a", "b"]}) == {"m0"}  # equality, not containment
    assert ids({"spec": {"y": 2, "x": 1}}) == {"m0"}  # key order does not matter
    assert ids({"n": 1, "tags": ["a"]}) == {"m1"}
    assert ids({"missing": 1}) == set()


def test_counts_limits_and_errors(collections_url: str) -> None:
    store = create_store(collections_url, fsync=False, max_items=5, tuning=SearchTuning())
    store.open()
    try:
        store.create("c", DIM, "m:v1", description="d", metadata={"owner": "me"}, index="flat")
        v = clustered(8, seed=2)
        written = store.upsert("c", [NewItem("a", "text", v[0]), NewItem("b", "image", v[1])])
        assert (written.added, written.updated, written.count) == (2, 0, 2)
        written = store.upsert(
            "c", [NewItem("a", "image", v[2]), NewItem("c", "text", v[3])]
        )  # a changes modality
        assert (written.added, written.updated, written.count) == (1, 1, 3)
        info = store.get("c")
        assert info.counts == {"text": 1, "image": 2} and info.index == "flat"
        assert (info.description, info.metadata) == ("d", {"owner": "me"})
        assert store.search("c", v[2], 3, modality="image")[0].id == "a"
        with pytest.raises(CollectionError) as full:
            store.upsert("c", [NewItem(f"n{i}", "text", v[4 + i]) for i in range(3)])
        assert full.value.code == "collection_full" and store.get("c").count == 3  # nothing written
        store.upsert("c", [NewItem("a", "text", v[5])])  # replacing never counts as growth
        with pytest.raises(CollectionError) as wrong:
            store.upsert("c", [NewItem("w", "text", np.ones(DIM + 1, np.float32))])
        assert wrong.value.status == 400
        nul = NewItem("n", "text", v[6], {"k": "a\x00b"}, "x\x00y")
        if store.url.startswith("sqlite"):  # SQLite keeps NUL characters
            store.upsert("c", [nul])
            assert store.get_item("c", "n") == Item("n", "text", {"k": "a\x00b"}, "x\x00y", None)
            store.delete_items("c", ["n"])
        else:  # PostgreSQL text and jsonb cannot hold them: a 400, never a 500
            with pytest.raises(CollectionError) as refused:
                store.upsert("c", [nul])
            assert refused.value.status == 400 and store.get_item("c", "n") is None
        with pytest.raises(CollectionError) as missing:
            store.upsert("nope", [NewItem("w", "text", v[0])])
        assert missing.value.code == "collection_not_found"
        with pytest.raises(CollectionError) as exists:
            store.create("c", DIM, "m:v1")
        assert exists.value.code == "collection_exists"
        written = store.delete_items("c", ["b", "b", "zz"])
        assert (written.deleted, written.missing, written.count) == (["b"], ["zz"], 2)
    finally:
        store.close()


def _exact_top(vectors: np.ndarray, query: np.ndarray, k: int, keep: np.ndarray | None = None) -> set[str]:
    scores = vectors @ query
    if keep is not None:
        scores = np.where(keep, scores, -np.inf)
    return {f"x{i}" for i in np.argsort(-scores)[:k]}


def test_hnsw_recall_tombstones_and_replacements(collections_url: str) -> None:
    store = opened(collections_url, ef_search=200)  # 16-d, dense clusters: pgvector needs a wide list
    try:
        _hnsw_recall_tombstones_and_replacements(store)
    finally:
        store.close()


def _hnsw_recall_tombstones_and_replacements(store: CollectionStore) -> None:
    store.create("ann", DIM, "m:v1", index="hnsw")
    vectors = clustered(3000, seed=3)
    for start in range(0, 3000, 500):
        store.upsert("ann", items(vectors)[start : start + 500])
    store.wait_indexed(120)
    assert store.ann_ready("ann") == {"text": True, "image": False}
    queries = clustered(30, seed=4)
    recall = np.mean(
        [len({h.id for h in store.search("ann", q, 10)} & _exact_top(vectors, q, 10)) / 10 for q in queries]
    )
    assert recall >= 0.9, recall
    # deleted and replaced items never come back from the graph
    query = queries[0]
    best = [h.id for h in store.search("ann", query, 10)]
    store.delete_items("ann", best[:5])
    store.upsert("ann", [NewItem(best[5], "text", unit(-query[None, :])[0], {"moved": True})])
    after = store.search("ann", query, 10)
    assert not {h.id for h in after} & set(best[:6])
    opposite = store.search("ann", unit(-query[None, :])[0], 1)
    assert opposite[0].id == best[5] and opposite[0].score == pytest.approx(1.0, abs=1e-5)
    # a filtered search is exact over the filtered items
    keep = np.asarray([i % 2 == 1 and f"x{i}" not in best[:6] for i in range(3000)])
    hits = store.search("ann", queries[1], 10, metadata={"odd": True})
    assert {h.id for h in hits} == _exact_top(vectors, queries[1], 10, keep)


def test_auto_collections_switch_to_hnsw_at_the_threshold(collections_url: str) -> None:
    store = opened(collections_url, threshold=400)
    try:
        store.create("auto", DIM, "m:v1")
        vectors = clustered(600, seed=5)
        store.upsert("auto", items(vectors[:300]))
        store.wait_indexed(60)
        assert store.ann_ready("auto") == {"text": False, "image": False}
        store.upsert("auto", items(vectors)[300:])
        store.wait_indexed(60)
        assert store.ann_ready("auto")["text"] is True
        hits = store.search("auto", vectors[7], 5)
        assert hits[0].id == "x7" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    finally:
        store.close()


def test_concurrent_writers_and_readers(store: CollectionStore) -> None:
    store.create("c", DIM, "m:v1")
    vectors = clustered(400, seed=6)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(40):
                store.upsert("c", [NewItem(f"w{w}-{i % 25}", "text", vectors[w * 100 + i], {"w": w})])
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for i in range(60):
                assert len(store.search("c", vectors[i], 5)) <= 5
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.get("c").count == 100
    assert {h.id for h in store.search("c", vectors[0], 200)} == {
        f"w{w}-{i}" for w in range(4) for i in range(25)
    }


def test_two_stores_on_one_database_see_each_other_at_once(
    collections_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # short removal history for the embedded store: a lagging store must reload, not miss deletes
    monkeypatch.setattr(sqlite_backend, "REMOVALS_KEPT", 3)
    monkeypatch.setattr(sqlite_backend, "PRUNE_EVERY", 2)
    first, second = opened(collections_url), opened(collections_url)
    try:
        first.create("c", DIM, "m:v1")
        vectors = clustered(50, seed=7)
        first.upsert("c", items(vectors[:20]))
        assert second.search("c", vectors[3], 1)[0].id == "x3"  # second loads it on first use
        for i in range(20, 30):  # more writes than the removal history keeps
            first.upsert("c", items(vectors)[i : i + 1])
            first.delete_items("c", [f"x{i - 20}"])
        seen = {h.id for h in second.search("c", vectors[0], 50)}
        assert seen == {f"x{i}" for i in range(10, 30)}
        second.upsert("c", [NewItem("x12", "text", vectors[40])])  # replaced through the other one
        assert first.search("c", vectors[40], 1)[0].id == "x12"
        assert first.get("c").count == second.get("c").count == 20
        second.delete("c")
        with pytest.raises(CollectionError):
            first.search("c", vectors[0], 1)
        first.create("c", DIM, "m:v2")  # the same name again: the old index is not reused
        assert second.search("c", vectors[0], 5) == []
    finally:
        first.close()
        second.close()


def test_items_returns_every_item_with_its_vector(store: CollectionStore) -> None:
    store.create("src", DIM, "m:v1")
    vectors = clustered(2500, seed=8)
    store.upsert("src", items(vectors[:1200]))
    store.upsert("src", items(vectors[1200:], prefix="y", modality="image"))
    copied = [item for batch in store.items("src", batch=700) for item in batch]
    assert len(copied) == 2500 and len({i.id for i in copied}) == 2500
    by_id = {i.id: i for i in copied}
    np.testing.assert_array_equal(by_id["y3"].vector, vectors[1203])
    assert by_id["x5"].metadata == {"i": 5, "odd": True} and by_id["y3"].modality == "image"
