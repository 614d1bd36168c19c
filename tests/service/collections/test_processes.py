"""Several real `momo serve` processes on one store: nothing acknowledged is lost, each sees the
others' writes at once, and a kill -9 mid-write loses no acknowledged item (both backends).

Embedded: two API processes on one data_dir (the workers of `momo serve --workers N`); PostgreSQL:
two replicas on one database.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx

from tests.service.helpers import ServeProcess

WRITERS_PER_PROCESS = 2
REQUESTS_PER_WRITER = 25
ITEMS_PER_REQUEST = 4


def _server(model_store: Path, tmp_path: Path, url: str, name: str) -> ServeProcess:
    return ServeProcess(
        model_store, tmp_path / "data", tmp_path / f"{name}.log", collections_url=url, collections_fsync=True
    )


def _writer(base_url: str, prefix: str, acknowledged: list[str], errors: list[str]) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        client.headers["Authorization"] = "Bearer test-key-123"
        for r in range(REQUESTS_PER_WRITER):
            ids = [f"{prefix}-{r}-{i}" for i in range(ITEMS_PER_REQUEST)]
            items = [{"id": i, "text": f"item {i}", "metadata": {"writer": prefix}} for i in ids]
            try:
                response = client.post("/v1/collections/shared/items", json={"items": items})
            except httpx.HTTPError as exc:  # a killed server: these ids were never acknowledged
                errors.append(f"{prefix}: {type(exc).__name__}")
                return
            if response.status_code != 200:
                errors.append(f"{prefix}: {response.status_code} {response.text[:200]}")
                return
            acknowledged.extend(ids)


def test_two_processes_on_one_store_lose_nothing_and_see_each_other(
    model_store: Path, tmp_path: Path, collections_url: str
) -> None:
    acknowledged: list[str] = []
    errors: list[str] = []
    with _server(model_store, tmp_path, collections_url, "a") as first:
        with first.client() as c:
            assert c.post("/v1/collections", json={"name": "shared"}).status_code == 201
        with _server(model_store, tmp_path, collections_url, "b") as second:
            writers = [
                threading.Thread(target=_writer, args=(server.url, f"{name}{w}", acknowledged, errors))
                for server, name in ((first, "a"), (second, "b"))
                for w in range(WRITERS_PER_PROCESS)
            ]
            for t in writers:
                t.start()
            for t in writers:
                t.join()
    assert errors == []
    assert len(acknowledged) == 2 * WRITERS_PER_PROCESS * REQUESTS_PER_WRITER * ITEMS_PER_REQUEST
    # both stopped; after a restart every acknowledged item is there (issue 13, failure 9)
    with (
        _server(model_store, tmp_path, collections_url, "a2") as first,
        _server(model_store, tmp_path, collections_url, "b2") as second,
        first.client() as a,
        second.client() as b,
    ):
        assert a.get("/v1/collections/shared").json()["count"] == len(acknowledged)
        missing = [i for i in acknowledged if a.get(f"/v1/collections/shared/items/{i}").status_code != 200]
        assert missing == []
        # a write acknowledged by one process is read and searched through the other at once
        fresh = {"a": "a photo of an ankle boot", "b": "the quick brown fox jumps over the lazy dog"}
        for name, writer, reader in (("a", a, b), ("b", b, a)):
            item_id = f"fresh-{name}"
            r = writer.post(
                "/v1/collections/shared/items", json={"items": [{"id": item_id, "text": fresh[name]}]}
            )
            assert r.status_code == 200, r.text
            assert reader.get(f"/v1/collections/shared/items/{item_id}").status_code == 200
            hits = reader.post(
                "/v1/collections/shared/search",
                json={"query": fresh[name], "top_k": 1},
            ).json()["data"]
            assert hits[0]["id"] == item_id
            assert reader.get("/v1/collections/shared").json()["count"] == len(acknowledged) + 1
            acknowledged.append(item_id)


def test_kill_9_mid_write_keeps_every_acknowledged_item(
    model_store: Path, tmp_path: Path, collections_url: str
) -> None:
    server = _server(model_store, tmp_path, collections_url, "killed").start()
    with server.client() as c:
        assert c.post("/v1/collections", json={"name": "shared"}).status_code == 201
    acknowledged: list[str] = []
    errors: list[str] = []
    writers = [
        threading.Thread(target=_writer, args=(server.url, f"w{w}", acknowledged, errors)) for w in range(3)
    ]
    for t in writers:
        t.start()
    # kill once a good part of the writes is acknowledged (polled, not slept)
    deadline_hit = threading.Event()
    timer = threading.Timer(120, deadline_hit.set)
    timer.start()
    while len(acknowledged) < 3 * REQUESTS_PER_WRITER * ITEMS_PER_REQUEST // 3 and not deadline_hit.is_set():
        threading.Event().wait(0.01)
    timer.cancel()
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    for t in writers:
        t.join()
    assert acknowledged, server.tail()
    with _server(model_store, tmp_path, collections_url, "restarted") as again, again.client() as c:
        count = c.get("/v1/collections/shared").json()["count"]
        missing = [i for i in acknowledged if c.get(f"/v1/collections/shared/items/{i}").status_code != 200]
        assert missing == []
        # an item in flight at the kill is either wholly there or wholly absent: counts agree
        assert count >= len(acknowledged)
        hits = c.post("/v1/collections/shared/search", json={"query": acknowledged[0], "top_k": 3}).json()
        assert len(hits["data"]) == 3
