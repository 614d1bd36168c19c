"""Retrieval collections over HTTP, persistence across restarts, and the WAL's crash safety."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.retrieval import WAL_FILE, CollectionStore, NewItem
from tests.service.helpers import LiveServer, assert_error, data_uri, make_settings, png_bytes

TEXTS = {
    "t1": "a red circle to the left of a blue square",
    "t2": "a small green triangle above a large yellow circle",
    "t3": "a photo of an ankle boot",
    "t4": "the quick brown fox jumps over the lazy dog",
}


def fill(client: httpx.Client, name: str) -> dict[str, bytes]:
    assert client.post("/v1/collections", json={"name": name, "description": "test"}).status_code == 201
    images = {f"i{k}": png_bytes(seed=k, size=(24, 24)) for k in range(3)}
    items = [
        {"id": k, "text": v, "metadata": {"kind": "text", "n": i}} for i, (k, v) in enumerate(TEXTS.items())
    ]
    items += [{"id": k, "image": data_uri(v), "metadata": {"kind": "image"}} for k, v in images.items()]
    r = client.post(f"/v1/collections/{name}/items", json={"items": items})
    assert r.status_code == 200, r.text
    assert r.json()["added"] == len(items) and r.json()["updated"] == 0
    return images


def test_collection_lifecycle_and_search(client: httpx.Client) -> None:
    images = fill(client, "shapes")
    info = client.get("/v1/collections/shapes").json()
    assert info["count"] == 7 and info["counts"] == {"text": 4, "image": 3}
    assert info["model"] == "momo-test:v1" and info["searchable"] is True and info["dim"] == 16
    assert "shapes" in [c["name"] for c in client.get("/v1/collections").json()["data"]]

    for item_id, text in TEXTS.items():  # a text query finds the item with exactly that text
        hits = client.post("/v1/collections/shapes/search", json={"query": text, "top_k": 3}).json()["data"]
        assert hits[0]["id"] == item_id and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert hits[0]["text"] == text and hits[0]["modality"] == "text"
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for item_id, data in images.items():  # an image query finds the same image
        r = client.post(
            "/v1/collections/shapes/search",
            json={"query": {"image": data_uri(data)}, "top_k": 2, "filter": {"modality": "image"}},
        )
        hits = r.json()["data"]
        assert hits[0]["id"] == item_id and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert all(h["modality"] == "image" for h in hits)
    text_only = client.post(
        "/v1/collections/shapes/search",
        json={"query": data_uri(images["i0"]), "top_k": 10, "filter": {"modality": "text"}},
    )
    assert {h["id"] for h in text_only.json()["data"]} == set(TEXTS)
    by_meta = client.post(
        "/v1/collections/shapes/search",
        json={"query": "circle", "top_k": 10, "filter": {"metadata": {"n": 2}}},
    )
    assert [h["id"] for h in by_meta.json()["data"]] == ["t3"]

    # upsert on the same id replaces the item
    r = client.post(
        "/v1/collections/shapes/items",
        json={"items": [{"id": "t1", "text": TEXTS["t4"], "metadata": {"v": 2}}]},
    )
    assert r.json()["added"] == 0 and r.json()["updated"] == 1
    assert client.get("/v1/collections/shapes").json()["count"] == 7
    item = client.get("/v1/collections/shapes/items/t1").json()
    assert item["text"] == TEXTS["t4"] and item["metadata"] == {"v": 2}
    hits = client.post("/v1/collections/shapes/search", json={"query": TEXTS["t4"], "top_k": 2}).json()[
        "data"
    ]
    assert {h["id"] for h in hits} == {"t1", "t4"}

    # deleting items
    r = client.post("/v1/collections/shapes/items/delete", json={"ids": ["t2", "nope"]})
    assert r.json()["deleted"] == ["t2"] and r.json()["missing"] == ["nope"]
    assert client.delete("/v1/collections/shapes/items/i0").status_code == 200
    assert_error(client.delete("/v1/collections/shapes/items/i0"), 404, "item_not_found")
    assert_error(client.get("/v1/collections/shapes/items/t2"), 404, "item_not_found")
    found = client.post("/v1/collections/shapes/search", json={"query": TEXTS["t2"], "top_k": 10}).json()[
        "data"
    ]
    assert "t2" not in {h["id"] for h in found} and "i0" not in {h["id"] for h in found}

    # errors
    assert_error(client.post("/v1/collections", json={"name": "shapes"}), 409, "collection_exists")
    assert_error(client.post("/v1/collections", json={"name": "../etc"}), 400, "invalid_collection_name")
    assert_error(client.post("/v1/collections/none/search", json={"query": "x"}), 404, "collection_not_found")
    assert_error(client.post("/v1/collections/shapes/items", json={"items": [{"id": "x"}]}), 422)
    assert_error(
        client.post(
            "/v1/collections/shapes/items",
            json={"items": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]},
        ),
        400,
        "duplicate_ids",
    )
    assert client.delete("/v1/collections/shapes").json()["deleted"] is True
    assert_error(client.get("/v1/collections/shapes"), 404, "collection_not_found")


def test_collections_survive_a_restart(model_store: Path, tmp_path: Path) -> None:
    settings = make_settings(
        model_store, tmp_path / "data", collections_fsync=True, collection_snapshot_every=3
    )
    queries = [*TEXTS.values(), "a circle"]
    with LiveServer(settings) as live, live.client() as c:
        images = fill(c, "keep")
        c.post("/v1/collections/keep/items/delete", json={"ids": ["t4"]})
        c.post(
            "/v1/collections/keep/items",
            json={"items": [{"id": "t1", "text": "replaced", "metadata": {"x": 1}}]},
        )
        assert c.post("/v1/collections", json={"name": "empty"}).status_code == 201
        before = [
            c.post("/v1/collections/keep/search", json={"query": q, "top_k": 10}).json()["data"]
            for q in queries
        ]
        before_img = c.post("/v1/collections/keep/search", json={"query": data_uri(images["i1"])}).json()[
            "data"
        ]
        listing = c.get("/v1/collections").json()["data"]
    with LiveServer(settings) as live, live.client() as c:
        assert c.get("/v1/collections").json()["data"] == listing
        after = [
            c.post("/v1/collections/keep/search", json={"query": q, "top_k": 10}).json()["data"]
            for q in queries
        ]
        assert after == before
        assert (
            c.post("/v1/collections/keep/search", json={"query": data_uri(images["i1"])}).json()["data"]
            == before_img
        )
        assert c.get("/v1/collections/keep/items/t1").json()["metadata"] == {"x": 1}


def _vec(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def test_wal_replay_ignores_a_torn_tail_and_snapshots_fold(tmp_path: Path) -> None:
    store = CollectionStore(tmp_path, snapshot_every=4)
    store.open()
    col = store.create("c", dim=8, model="m:v1")
    for i in range(6):  # crosses one snapshot (after 4 records)
        col.upsert([NewItem(f"x{i}", "text", _vec(i), {"i": i}, f"text {i}")])
    col.delete(["x0"])
    expected = col.search(_vec(3), top_k=10)
    col.close()
    wal = tmp_path / "c" / WAL_FILE
    size = wal.stat().st_size
    with wal.open("ab") as fh:  # a crash in the middle of appending the next record
        fh.write(b'0badc0de {"op":"upsert","seq":99,"items":[{"id":"torn"')
    reopened = CollectionStore(tmp_path, snapshot_every=4)
    reopened.open()
    again = reopened.get("c")
    assert [(h.id, round(h.score, 6)) for h in again.search(_vec(3), top_k=10)] == [
        (h.id, round(h.score, 6)) for h in expected
    ]
    assert again.get("torn") is None and again.get("x0") is None and again.count == 5
    assert wal.stat().st_size == size  # the torn tail was cut off
    again.upsert([NewItem("x9", "image", _vec(9), {}, None)])  # and appending continues cleanly
    reopened.close()
    third = CollectionStore(tmp_path)
    third.open()
    assert third.get("c").count == 6 and third.get("c").get("x9") is not None


def test_concurrent_adds_and_searches(tmp_path: Path) -> None:
    store = CollectionStore(tmp_path, fsync=False, snapshot_every=50)
    store.open()
    col = store.create("c", dim=8, model="m:v1")
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(40):
                col.upsert([NewItem(f"w{w}-{i % 25}", "text", _vec(w * 100 + i), {"w": w})])
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for i in range(80):
                hits = col.search(_vec(i), top_k=5)
                assert len(hits) <= 5
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert col.count == 4 * 25
    store.close()
    again = CollectionStore(tmp_path)
    again.open()
    assert again.get("c").count == 100
