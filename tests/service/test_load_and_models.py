"""50 concurrent clients, /v1/models, hot model activation under load, collections on a model swap,
graceful shutdown with requests in flight."""

from __future__ import annotations

import gc
import shutil
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from momo.artifact import update_manifest
from momo.store import ModelStore
from tests.service.helpers import LiveServer, assert_error, data_uri, make_settings, png_bytes

BAD_REFERENCES = [
    "momo-test:..",
    "momo-test:.",
    "..",
    ".",
    "momo-test:v1/..",
    "a/b",
    "momo-test:v1\x00",
    "x:",
]

IMAGES = [data_uri(png_bytes(seed=s, size=(18, 18))) for s in range(4)]


def mixed_requests(c: httpx.Client, i: int) -> list[httpx.Response]:
    image = IMAGES[i % len(IMAGES)]
    return [
        c.post("/v1/embeddings", json={"input": [f"client {i} says hello", "a red circle"]}),
        c.post("/v1/embeddings", json={"input": [image]}),
        c.post(
            "/v1/classify", json={"input": {"image": image}, "labels": ["circle", "square", f"thing {i % 3}"]}
        ),
        c.post("/v1/vqa", json={"image": image, "question": "what color is it"}),
        c.post("/v1/collections/load/search", json={"query": f"client {i % 5}", "top_k": 3}),
        c.post(
            "/v1/collections/load/items", json={"items": [{"id": f"c{i}", "text": f"client {i} says hello"}]}
        ),
    ]


def test_fifty_concurrent_clients_mixing_endpoints(server: LiveServer) -> None:
    with server.client() as c:
        assert c.post("/v1/collections", json={"name": "load"}).status_code == 201

    def client_run(i: int) -> list[tuple[int, str]]:
        with server.client() as c:
            return [(r.status_code, r.text[:200]) for r in mixed_requests(c, i)]

    with ThreadPoolExecutor(50) as pool:
        results = [r for batch in pool.map(client_run, range(50)) for r in batch]
    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:5]
    with server.client() as c:
        assert c.get("/v1/collections/load").json()["count"] == 50
        metrics = c.get("/metrics").text
    # batches really formed under this load
    sizes = [line for line in metrics.splitlines() if line.startswith("momo_batch_size_sum")]
    counts = [line for line in metrics.splitlines() if line.startswith("momo_batch_size_count")]
    total_items = sum(float(line.split()[-1]) for line in sizes)
    total_batches = sum(float(line.split()[-1]) for line in counts)
    assert total_items > total_batches
    for name in (
        "momo_http_request_duration_seconds_bucket",
        "momo_inference_seconds_bucket",
        "momo_queue_depth",
        'momo_model_info{device="cpu",name="momo-test",runtime="torch",version="v1"} 1.0',
    ):
        assert name in metrics


def test_models_listing(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    cards = {m["id"]: m for m in body["data"]}
    assert set(cards) == {"momo-test:v1", "momo-test:v2", "momo-bare:v1"}
    v1 = cards["momo-test:v1"]
    assert v1["active"] and v1["serving"] and v1["runtime"] == "torch" and v1["device"] == "cpu"
    assert v1["embedding_dim"] == 16 and v1["object"] == "model" and v1["created"] > 0
    assert v1["heads"]["vqa"] == {"input": "pair", "task": "vqa", "num_labels": 8}
    assert set(v1["heads"]) == {"itm", "vqa", "shapes", "topic"}
    assert not cards["momo-test:v2"]["serving"] and cards["momo-test:v2"]["runtime"] is None
    assert cards["momo-bare:v1"]["heads"] == {}
    assert client.get("/v1/models/momo-test:v2").json()["id"] == "momo-test:v2"
    assert_error(client.get("/v1/models/nope:v9"), 404, "model_not_found")


def test_a_versions_detail_has_the_figures_of_its_manifest(model_store: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(model_store, root)
    figures = {"eval": {"macro": {"overall": 0.5}}, "finetune": {"metric": "accuracy"}}
    update_manifest(root / "momo-test" / "v2", metrics=figures)
    with LiveServer(make_settings(root, tmp_path / "data")) as live, live.client() as c:
        assert c.get("/v1/models/momo-test:v2").json()["metrics"] == figures
        assert c.get("/v1/models/momo").json()["metrics"] == {}
        update_manifest(root / "momo-test" / "v1", metrics=figures)  # e.g. `momo eval` of the served version
        assert c.get("/v1/models/momo-test:v1").json()["metrics"] == figures
        assert all(
            "metrics" not in card for card in c.get("/v1/models").json()["data"]
        )  # the list stays lean


def test_activation_under_load_drops_nothing(model_store: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(model_store, root)
    settings = make_settings(root, tmp_path / "data")
    with LiveServer(settings) as live:
        with live.client() as c:
            assert c.post("/v1/collections", json={"name": "v1-only"}).status_code == 201
            c.post("/v1/collections/v1-only/items", json={"items": [{"id": "a", "text": "a red circle"}]})
        stop = threading.Event()
        results: list[tuple[int, str]] = []
        lock = threading.Lock()

        def load(i: int) -> None:
            with live.client() as c:
                while not stop.is_set():
                    for r in mixed_requests(c, i)[:4]:
                        model = r.json().get("model", "") if r.status_code == 200 else r.text
                        with lock:
                            results.append((r.status_code, model))

        def served(model: str, at_least: int = 1, timeout: float = 30.0) -> None:
            deadline = time.monotonic() + timeout
            while sum(1 for _, m in list(results) if m == model) < at_least:
                assert time.monotonic() < deadline, f"no responses from {model}"
                time.sleep(0.02)

        threads = [threading.Thread(target=load, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        served("momo-test:v1", at_least=20)
        with live.client() as c:
            r = c.post("/v1/models/momo-test:v2/activate")
            assert r.status_code == 200, r.text
            assert r.json()["changed"] and r.json()["previous"] == "momo-test:v1"
            assert r.json()["model"]["id"] == "momo-test:v2" and r.json()["model"]["serving"]
            assert ModelStore(root).active() == ("momo-test", "v2")  # the store's pointer is persisted
            served("momo-test:v2", at_least=20)
            # collections remember their model: a swap makes them refuse (409) instead of mixing vectors
            error = assert_error(
                c.post("/v1/collections/v1-only/search", json={"query": "x"}),
                409,
                "collection_model_mismatch",
            )
            assert "momo-test:v1" in error["message"]
            assert c.get("/v1/collections/v1-only").json()["searchable"] is False
            before = sum(1 for _, m in list(results) if m == "momo-test:v1")
            assert c.post("/v1/models/momo-test:v1/activate").status_code == 200
            served("momo-test:v1", at_least=before + 20)
        stop.set()
        for t in threads:
            t.join()
        failures = [r for r in results if r[0] != 200]
        assert not failures, failures[:5]
        served = {m for _, m in results}
        assert {"momo-test:v1", "momo-test:v2"} <= served, served
        with live.client() as c:
            assert (
                c.post("/v1/collections/v1-only/search", json={"query": "a red circle"}).json()["data"][0][
                    "id"
                ]
                == "a"
            )
            same = c.post("/v1/models/momo-test:v1/activate").json()
            assert same["changed"] is False
            assert_error(c.post("/v1/models/momo-test:v9/activate"), 404, "model_not_found")
            assert_error(c.post("/v1/models/ghost/activate"), 404, "model_not_found")
            assert c.get("/ready").status_code == 200
            assert 'momo_model_activations_total{outcome="ok"} 2.0' in c.get("/metrics").text


def test_shutdown_lets_in_flight_requests_finish(model_store: Path, tmp_path: Path) -> None:
    live = LiveServer(make_settings(model_store, tmp_path)).start()
    handle = live.engine.current
    original = handle.runtime.encode_texts

    def slow(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        time.sleep(0.3)
        return original(ids, mask)

    handle.runtime.encode_texts = slow

    def call(i: int) -> int:
        with live.client() as c:
            return c.post("/v1/embeddings", json={"input": f"in flight {i}"}).status_code

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(call, i) for i in range(8)]
        deadline = time.monotonic() + 30
        while handle.inflight + sum(f.done() for f in futures) < 8:  # every request reached the server
            assert time.monotonic() < deadline
            time.sleep(0.01)
        live.stop()  # graceful: uvicorn stops accepting, waits for these, then the lifespan drains
        statuses = [f.result() for f in futures]
    assert statuses == [200] * 8
    assert all(not q.alive for q in handle.queues.values())


def _retired(live: LiveServer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while live.engine._retiring:
        assert time.monotonic() < deadline, "the old model was not retired"
        time.sleep(0.02)


def test_a_retired_model_is_freed_even_with_a_frozen_heap(model_store: Path, tmp_path: Path) -> None:
    """gc_freeze moves the served model out of the cyclic GC's reach; a retired model must still be
    freed at once (no reference cycle may hold it). It used to stay for the life of the process."""
    root = tmp_path / "store"
    shutil.copytree(model_store, root)
    try:
        with LiveServer(make_settings(root, tmp_path / "data", gc_freeze=True)) as live, live.client() as c:
            handles = [weakref.ref(live.engine.current)]
            for target in ("momo-test:v2", "momo-test:v1", "momo-test:v2"):
                assert c.post(f"/v1/models/{target}/activate").status_code == 200
                handles.append(weakref.ref(live.engine.current))
                _retired(live)
            assert [h() is None for h in handles] == [True, True, True, False]
            assert c.post("/v1/embeddings", json={"input": "after the swaps"}).status_code == 200
    finally:
        gc.unfreeze()


def test_model_references_follow_one_grammar_and_errors_show_no_server_paths(
    model_store: Path, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    shutil.copytree(model_store, root)
    with LiveServer(make_settings(root, tmp_path / "data")) as live, live.client() as c:
        for reference in BAD_REFERENCES:
            # percent-encoded, or the client would resolve the dot segments itself
            quoted = reference.replace(".", "%2E").replace("/", "%2F").replace("\x00", "%00")
            r = c.post(f"/v1/models/{quoted}/activate")
            if r.status_code == 404 and "/" in reference:
                continue  # a slash ends the path segment: no route, nothing resolved
            error = assert_error(r, 400, "invalid_model_reference")
            assert error["param"] == "model_id", error
        for reference in ("momo-test:v9", "ghost", "ghost:v1"):
            error = assert_error(c.post(f"/v1/models/{reference}/activate"), 404, "model_not_found")
            assert str(root) not in error["message"] and str(tmp_path) not in error["message"]
        assert_error(c.get("/v1/models/momo-test:%2E%2E"), 400, "invalid_model_reference")
        r = c.post("/v1/embeddings", json={"input": "x", "model": "momo-test:.."})
        assert_error(r, 400, "invalid_model_reference")
        assert ModelStore(root).active() == ("momo-test", "v1")
        assert c.get("/ready").status_code == 200
