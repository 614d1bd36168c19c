"""The lean hot path: orjson (numpy-aware) responses, cheap request ids, the sampled access log, the
model pin released without a generator dependency."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import numpy as np

from service.middleware import RequestIds
from service.responses import encode_json
from tests.service.helpers import LiveServer, make_settings


def test_encode_json_writes_numpy_arrays_and_scalars() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((3, 5)).astype(np.float32)
    body = {"data": list(vectors), "n": np.int64(3), "s": np.float32(0.25), "keys": {1: "one"}}
    decoded = json.loads(encode_json(body))
    # float32 values read back as exactly the same float32
    np.testing.assert_array_equal(np.asarray(decoded["data"], dtype=np.float32), vectors)
    assert decoded["n"] == 3 and decoded["s"] == 0.25 and decoded["keys"] == {"1": "one"}
    assert encode_json({"a": [1, 2]}) == b'{"a":[1,2]}'  # compact


def test_encode_json_replaces_lone_surrogates_and_keeps_numpy_on_the_fallback_path() -> None:
    out = encode_json({"text": "bad \ud800 text", "v": np.arange(3, dtype=np.float32)})
    assert json.loads(out) == {"text": "bad \ufffd text", "v": [0.0, 1.0, 2.0]}


def test_request_ids_are_unique_and_uuid_sized() -> None:
    ids = RequestIds()
    seen = {ids.next() for _ in range(10_000)}
    assert len(seen) == 10_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in list(seen)[:100])
    assert RequestIds().next()[:16] != ids.next()[:16]  # another process (or app): another prefix


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_access_log_sample_zero_logs_errors_only_and_the_pin_is_released(
    model_store: Path, tmp_path: Path
) -> None:
    access = logging.getLogger("momo.service.access")
    capture = _Capture()
    access.addHandler(capture)
    previous = access.level
    access.setLevel(logging.INFO)
    settings = make_settings(model_store, tmp_path, access_log_sample=0.0)
    try:
        with LiveServer(settings) as live, live.client() as c:
            for _ in range(5):
                assert c.post("/v1/embeddings", json={"input": "hello"}).status_code == 200
            assert c.post("/v1/embeddings", json={"input": 3}).status_code == 422
            handle = live.engine.current
            assert handle.inflight == 0  # every request's pin was released
            r = c.post("/v1/embeddings", json={"input": ["a", "b"]})
            assert r.headers["content-type"] == "application/json"
            assert len(r.json()["data"]) == 2 and handle.inflight == 0
    finally:
        access.removeHandler(capture)
        access.setLevel(previous)
    statuses = [getattr(r, "status", None) for r in capture.records if r.getMessage() == "request"]
    assert statuses == [422]


def test_access_log_off_logs_nothing(model_store: Path, tmp_path: Path) -> None:
    access = logging.getLogger("momo.service.access")
    capture = _Capture()
    access.addHandler(capture)
    previous = access.level
    access.setLevel(logging.INFO)
    try:
        with LiveServer(make_settings(model_store, tmp_path, access_log=False)) as live, live.client() as c:
            c.post("/v1/embeddings", json={"input": 3})
            assert isinstance(c.get("/health"), httpx.Response)
    finally:
        access.removeHandler(capture)
        access.setLevel(previous)
    assert not [r for r in capture.records if r.getMessage() == "request"]
