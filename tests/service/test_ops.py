"""Ops surface: request ids, structured request logs, Prometheus metrics, OpenAPI/docs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx

from service.logs import JSONFormatter
from tests.service.helpers import LiveServer, assert_error, make_settings


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JSONFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_request_id_round_trip_and_json_request_log(server: LiveServer, client: httpx.Client) -> None:
    access = logging.getLogger("momo.service.access")
    capture = _Capture()
    access.addHandler(capture)
    previous = access.level
    access.setLevel(logging.INFO)
    try:
        r = client.post("/v1/embeddings", json={"input": "hello"}, headers={"X-Request-ID": "req-abc.123"})
        assert r.headers["x-request-id"] == "req-abc.123"
        generated = client.get("/health").headers["x-request-id"]
        assert len(generated) == 32
        bad = client.get("/health", headers={"X-Request-ID": "no spaces <allowed>"}).headers["x-request-id"]
        assert bad != "no spaces <allowed>" and len(bad) == 32
        error = client.post("/v1/embeddings", json={"input": 3}, headers={"X-Request-ID": "req-err"})
        assert error.status_code == 422 and error.headers["x-request-id"] == "req-err"
    finally:
        access.removeHandler(capture)
        access.setLevel(previous)
    records = [json.loads(line) for line in capture.lines]
    mine = next(r for r in records if r.get("request_id") == "req-abc.123")
    assert mine["msg"] == "request" and mine["method"] == "POST" and mine["status"] == 200
    assert mine["route"] == "/v1/embeddings" and mine["duration_ms"] >= 0 and "ts" in mine
    assert next(r for r in records if r.get("request_id") == "req-err")["status"] == 422


def test_metrics_exposition(server: LiveServer, client: httpx.Client) -> None:
    client.post("/v1/embeddings", json={"input": ["a", "b"]})
    text = client.get("/metrics").text
    for needle in (
        'momo_http_requests_total{method="POST",route="/v1/embeddings",status="200"}',
        'momo_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/v1/embeddings"}',
        'momo_queue_depth{queue="text"}',
        'momo_worker_alive{queue="image"} 1.0',
        "momo_batch_size_bucket",
        'momo_inference_seconds_count{queue="text"}',
        "momo_model_info{",
        "momo_text_tokens_total",
        'momo_inputs_total{modality="text"}',
        "# HELP momo_fine_tune_jobs",
    ):
        assert needle in text, needle


def test_openapi_declares_bearer_auth_and_docs_render(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/embeddings"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in schema["paths"]["/health"]["get"]
    for path in (
        "/v1/embeddings",
        "/v1/classify",
        "/v1/vqa",
        "/v1/collections",
        "/v1/collections/{name}/search",
        "/v1/models",
        "/v1/models/{model_id}/activate",
        "/ready",
        "/metrics",
    ):
        assert path in schema["paths"], path
    assert "swagger" in client.get("/docs").text.lower()


def test_fault_hooks_are_unreachable_unless_test_hooks_is_on(model_store: Path, tmp_path: Path) -> None:
    with LiveServer(make_settings(model_store, tmp_path, test_hooks=False)) as live, live.client() as c:
        assert_error(c.post("/internal/test/kill-worker/text"), 404)
        assert live.engine.current.queues["text"].alive
        assert c.get("/ready").status_code == 200
        assert c.post("/v1/embeddings", json={"input": "x"}).status_code == 200
