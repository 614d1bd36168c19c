"""Invalid Unicode (lone surrogates) in any text field: a 400 naming the field, nothing stored; and
text already on disk that is not valid Unicode cannot take down a read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.helpers import LiveServer, assert_error, data_uri, make_settings, png_bytes

LONE = "\ud800"
TRAIL = "x\udfff"

# (path, body, the field the 400 must name)
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/embeddings", {"input": LONE}, "input"),
    ("/v1/embeddings", {"input": ["fine", TRAIL]}, "input[1]"),
    ("/v1/embeddings", {"input": [{"text": LONE}]}, "input[0].text"),
    ("/v1/embeddings", {"input": "x", "user": LONE}, "user"),
    ("/v1/embeddings", {"input": "x", "model": TRAIL}, "model"),
    ("/v1/classify", {"input": "x", "labels": ["a", LONE]}, "labels[1]"),
    ("/v1/classify", {"input": TRAIL, "labels": ["a"]}, "input"),
    ("/v1/classify", {"input": "x", "labels": ["a"], "template": "{label}" + LONE}, "template"),
    ("/v1/classify", {"input": "x", "head": LONE}, "head"),
    ("/v1/vqa", {"image": data_uri(png_bytes()), "question": TRAIL}, "question"),
    ("/v1/collections", {"name": LONE}, "name"),
    ("/v1/collections", {"name": "u-new", "description": LONE}, "description"),
    ("/v1/collections", {"name": "u-new", "metadata": {"k": TRAIL}}, "metadata.k"),
    ("/v1/collections", {"name": "u-new", "metadata": {LONE: 1}}, "metadata"),
    ("/v1/collections/u/items", {"items": [{"id": LONE, "text": "x"}]}, "items[0].id"),
    ("/v1/collections/u/items", {"items": [{"id": "a", "text": TRAIL}]}, "items[0].text"),
    (
        "/v1/collections/u/items",
        {"items": [{"id": "a", "text": "x"}, {"id": "b", "text": "y", "metadata": {"a": {"b": [1, LONE]}}}]},
        "items[1].metadata.a.b[1]",
    ),
    ("/v1/collections/u/items/delete", {"ids": ["a", LONE]}, "ids[1]"),
    ("/v1/collections/u/search", {"query": LONE}, "query"),
    ("/v1/collections/u/search", {"query": {"text": TRAIL}}, "query.text"),
    ("/v1/collections/u/search", {"query": "x", "filter": {"metadata": {"k": LONE}}}, "filter.metadata.k"),
    ("/v1/fine-tunes", {"task": "text_classification", "dataset_path": LONE}, "dataset_path"),
    ("/v1/fine-tunes", {"task": "vqa", "dataset_path": "d", "head": TRAIL}, "head"),
]


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    # json.dumps escapes the surrogates as \\udXXX: the JSON text is valid, the string it holds is not
    return client.post(path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def collection(server: LiveServer) -> str:
    with server.client() as c:
        assert c.post("/v1/collections", json={"name": "u"}).status_code == 201
        items = [{"id": "a", "text": "a red circle", "metadata": {"k": "v"}}]
        assert c.post("/v1/collections/u/items", json={"items": items}).status_code == 200
    return "u"


@pytest.mark.parametrize(("path", "body", "param"), CASES, ids=[f"{p}:{n}" for p, _, n in CASES])
def test_invalid_unicode_is_a_400_naming_the_field(
    client: httpx.Client, collection: str, path: str, body: dict[str, Any], param: str
) -> None:
    error = assert_error(_post(client, path, body), 400, "invalid_unicode")
    assert error["param"] == param, error
    assert param in error["message"]
    assert client.get("/health").status_code == 200
    assert client.post("/v1/embeddings", json={"input": "a normal request"}).status_code == 200


def test_nothing_is_stored_from_a_refused_request(client: httpx.Client, collection: str) -> None:
    before = client.get(f"/v1/collections/{collection}").json()["count"]
    items = [{"id": "z1", "text": "fine"}, {"id": "z2", "text": "fine", "metadata": {"k": LONE}}]
    assert_error(_post(client, f"/v1/collections/{collection}/items", {"items": items}), 400)
    assert client.get(f"/v1/collections/{collection}").json()["count"] == before
    assert_error(client.get(f"/v1/collections/{collection}/items/z1"), 404, "item_not_found")
    names = [c["name"] for c in client.get("/v1/collections").json()["data"]]
    assert "u-new" not in names


def test_surrogates_cannot_arrive_through_the_url(client: httpx.Client, collection: str) -> None:
    """Percent-decoding of paths and queries replaces invalid UTF-8 (a CESU-8 surrogate included)."""
    assert_error(client.get(f"/v1/collections/{collection}/items/%ED%A0%80"), 404, "item_not_found")
    assert_error(client.get("/v1/collections/%ED%A0%80"), 404)
    assert_error(client.get("/v1/fine-tunes", params={"after": "\ufffd"}), 400, "invalid_cursor")
    raw = client.get("/v1/fine-tunes?after=%ED%A0%80")
    assert raw.status_code == 400, raw.text


def test_invalid_utf8_bytes_in_the_body_are_a_4xx(client: httpx.Client) -> None:
    for raw in (b'{"input": "\xed\xa0\x80"}', b'{"input": "\xff\xfe"}', b'{"input": "\xc3"}'):
        r = client.post("/v1/embeddings", content=raw, headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, (raw, r.status_code, r.text)
        assert_error(r, r.status_code)


def test_text_on_disk_that_is_not_valid_unicode_cannot_take_down_reads(
    model_store: Path, tmp_path: Path
) -> None:
    """Collections written by the old store before the edge refused lone surrogates (it wrote them as
    JSON escapes) are migrated on first start with U+FFFD in their place: listing, reading, searching
    and deleting answer 200, and so does everything after a restart."""
    settings = make_settings(model_store, tmp_path)
    with LiveServer(settings) as live:
        handle = live.engine.current
        reference, dim = handle.reference, handle.dim
    folder = settings.data_dir / "collections" / "poisoned"
    folder.mkdir(parents=True)
    meta = {"name": "poisoned", "dim": dim, "model": reference, "description": "bad " + LONE,
            "metadata": {"k" + TRAIL: "v" + LONE}, "format": 1}  # fmt: skip
    (folder / "collection.json").write_text(json.dumps(meta))  # ensure_ascii: "\\ud800" escapes
    item = {
        "id": "item-1",
        "modality": "text",
        "metadata": {"m": TRAIL, LONE: [LONE]},
        "text": "text " + LONE,
    }
    vector = np.full((1, dim), 1 / np.sqrt(dim), dtype=np.float32)
    state = np.frombuffer(json.dumps({"seq": 1, "items": [item]}).encode(), dtype=np.uint8)
    np.savez(folder / "snapshot.npz", state=state, vectors=vector)
    for _restart in range(2):
        with LiveServer(settings) as live, live.client() as c:
            listed = c.get("/v1/collections")
            assert listed.status_code == 200, listed.text
            listed.content.decode("utf-8")  # strict: the bytes sent are valid UTF-8
            info = next(x for x in listed.json()["data"] if x["name"] == "poisoned")
            assert info["description"] == "bad \ufffd"
            assert info["metadata"] == {"kx\ufffd": "v\ufffd"}
            assert c.get("/v1/collections/poisoned").status_code == 200
            got = c.get("/v1/collections/poisoned/items/item-1")
            assert got.status_code == 200, got.text
            assert got.json()["text"] == "text \ufffd" and got.json()["metadata"]["m"] == "x\ufffd"
            hits = c.post("/v1/collections/poisoned/search", json={"query": "anything", "top_k": 5})
            assert hits.status_code == 200, hits.text
            assert hits.json()["data"][0]["id"] == "item-1"
    with LiveServer(settings) as live, live.client() as c:
        deleted = c.post("/v1/collections/poisoned/items/delete", json={"ids": ["item-1"]})
        assert deleted.status_code == 200 and deleted.json()["deleted"] == ["item-1"]
        assert c.get("/health").status_code == 200
