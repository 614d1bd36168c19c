"""Retrieval collections over HTTP, on both backends: add, upsert, delete, search, filters,
thumbnails, model-version mismatch (409), and a restart."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.service.helpers import LiveServer, assert_error, data_uri, make_settings, png_bytes

TEXTS = {
    "t1": "a red circle to the left of a blue square",
    "t2": "a small green triangle above a large yellow circle",
    "t3": "a photo of an ankle boot",
    "t4": "the quick brown fox jumps over the lazy dog",
}


@pytest.fixture()
def live(model_store: Path, tmp_path: Path, collections_url: str) -> Iterator[LiveServer]:
    with LiveServer(make_settings(model_store, tmp_path / "data", collections_url=collections_url)) as server:
        yield server


@pytest.fixture()
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client() as c:
        yield c


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
    assert info["index"] == "auto"
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
    both = client.post(
        "/v1/collections/shapes/search",
        json={"query": "circle", "top_k": 10, "filter": {"metadata": {"kind": "text", "n": 2.0}}},
    )
    assert [h["id"] for h in both.json()["data"]] == ["t3"]  # 2.0 equals 2, as in JSON
    nothing = client.post(
        "/v1/collections/shapes/search",
        json={"query": "circle", "filter": {"metadata": {"kind": "image"}, "modality": "text"}},
    )
    assert nothing.json()["data"] == []

    # upsert on the same id replaces the item
    r = client.post(
        "/v1/collections/shapes/items",
        json={"items": [{"id": "t1", "text": TEXTS["t4"], "metadata": {"v": 2}}]},
    )
    assert r.json()["added"] == 0 and r.json()["updated"] == 1
    assert client.get("/v1/collections/shapes").json()["count"] == 7
    item = client.get("/v1/collections/shapes/items/t1").json()
    assert item["text"] == TEXTS["t4"] and item["metadata"] == {"v": 2} and item["thumbnail"] is None
    hits = client.post("/v1/collections/shapes/search", json={"query": TEXTS["t4"], "top_k": 2}).json()[
        "data"
    ]
    assert {h["id"] for h in hits} == {"t1", "t4"}
    gone = client.post(
        "/v1/collections/shapes/search", json={"query": "x", "filter": {"metadata": {"n": 0}}}
    ).json()["data"]
    assert gone == []  # the replaced item's old metadata no longer matches

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
    assert client.get("/v1/collections/shapes").json()["counts"] == {"text": 3, "image": 2}

    # errors
    assert_error(client.post("/v1/collections", json={"name": "shapes"}), 409, "collection_exists")
    assert_error(client.post("/v1/collections", json={"name": "../etc"}), 400, "invalid_collection_name")
    assert_error(client.post("/v1/collections", json={"name": "x", "index": "ivf"}), 422)
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
    # a new collection under the same name starts empty
    assert client.post("/v1/collections", json={"name": "shapes"}).status_code == 201
    assert client.get("/v1/collections/shapes").json()["count"] == 0
    assert client.post("/v1/collections/shapes/search", json={"query": "circle"}).json()["data"] == []


def _decode_data_uri(uri: str) -> Image.Image:
    header, _, payload = uri.partition(",")
    assert header in ("data:image/webp;base64", "data:image/jpeg;base64"), header
    image = Image.open(io.BytesIO(base64.b64decode(payload)))
    image.load()
    return image


def test_thumbnails_are_kept_when_asked_for(client: httpx.Client) -> None:
    wide = png_bytes(seed=7, size=(300, 150))
    assert client.post("/v1/collections", json={"name": "thumbs"}).status_code == 201
    items = [
        {"id": "wide", "image": data_uri(wide), "thumbnail": True},
        {"id": "plain", "image": data_uri(png_bytes(seed=8, size=(40, 40)))},
        {"id": "words", "text": "a thumbnail is asked for a text", "thumbnail": True},
    ]
    assert client.post("/v1/collections/thumbs/items", json={"items": items}).status_code == 200
    kept = client.get("/v1/collections/thumbs/items/wide").json()["thumbnail"]
    image = _decode_data_uri(kept)
    assert image.size == (128, 64)  # longest side 128, aspect kept
    assert len(kept) < 16_000
    assert client.get("/v1/collections/thumbs/items/plain").json()["thumbnail"] is None
    assert client.get("/v1/collections/thumbs/items/words").json()["thumbnail"] is None  # texts: always null
    hits = client.post("/v1/collections/thumbs/search", json={"query": data_uri(wide), "top_k": 3}).json()[
        "data"
    ]
    assert hits[0]["id"] == "wide" and hits[0]["thumbnail"] == kept
    assert {h["id"]: h["thumbnail"] for h in hits[1:]} == {"plain": None, "words": None}
    # replacing an item without asking drops its thumbnail
    client.post("/v1/collections/thumbs/items", json={"items": [{"id": "wide", "image": data_uri(wide)}]})
    assert client.get("/v1/collections/thumbs/items/wide").json()["thumbnail"] is None


def test_collections_survive_a_restart(model_store: Path, tmp_path: Path, collections_url: str) -> None:
    settings = make_settings(
        model_store, tmp_path / "data", collections_url=collections_url, collections_fsync=True
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


def test_another_model_version_gets_409(model_store: Path, tmp_path: Path, collections_url: str) -> None:
    """Two servers on one store, serving v1 and v2: v2 may list and read v1's collection, not mix
    its vectors in."""
    v1 = make_settings(model_store, tmp_path / "data", collections_url=collections_url)
    v2 = make_settings(model_store, tmp_path / "data", collections_url=collections_url, model="momo-test:v2")
    with LiveServer(v1) as first, first.client() as a, LiveServer(v2) as second, second.client() as b:
        assert a.post("/v1/collections", json={"name": "v1-only"}).status_code == 201
        assert (
            a.post("/v1/collections/v1-only/items", json={"items": [{"id": "a", "text": "x"}]}).status_code
            == 200
        )
        error = assert_error(
            b.post("/v1/collections/v1-only/search", json={"query": "x"}), 409, "collection_model_mismatch"
        )
        assert "momo-test:v1" in error["message"]
        assert_error(
            b.post("/v1/collections/v1-only/items", json={"items": [{"id": "b", "text": "y"}]}),
            409,
            "collection_model_mismatch",
        )
        assert b.get("/v1/collections/v1-only").json()["searchable"] is False
        assert a.get("/v1/collections/v1-only").json()["searchable"] is True
        assert b.get("/v1/collections/v1-only/items/a").status_code == 200
        assert b.get("/v1/collections/v1-only").json()["count"] == 1
