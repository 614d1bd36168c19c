"""OpenTelemetry tracing (off by default): request -> queue wait -> batch -> runtime call spans."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.service.helpers import LiveServer, make_settings

pytest.importorskip("opentelemetry.sdk")


def test_tracing_is_off_and_not_imported_by_default(server: LiveServer) -> None:
    assert server.engine.tracer is None
    assert all(q._tracer is None for q in server.engine.current.queues.values())


def test_request_queue_batch_and_runtime_spans(model_store: Path, tmp_path: Path) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from service.app import create_app

    exporter = InMemorySpanExporter()
    settings = make_settings(model_store, tmp_path, tracing=True)
    live = LiveServer(settings, app=create_app(settings, span_exporter=exporter))  # in-memory export
    with live, live.client() as c:
        assert c.post("/v1/embeddings", json={"input": ["traced one", "traced two"]}).status_code == 200
        assert c.get("/health").status_code == 200
        live.engine.tracer.provider.force_flush()
        spans = exporter.get_finished_spans()
    by_name: dict[str, list] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    (request,) = [s for s in spans if s.kind.name == "SERVER"]
    assert request.attributes["http.route"] == "/v1/embeddings"  # /health is not traced
    waits = by_name["momo.queue_wait"]
    assert len(waits) == 2 and all(w.parent.span_id == request.context.span_id for w in waits)
    assert all(w.context.trace_id == request.context.trace_id for w in waits)
    batches = by_name["momo.batch"]
    assert sum(b.attributes["momo.batch_size"] for b in batches) == 2
    assert all(any(link.context.span_id == request.context.span_id for link in b.links) for b in batches)
    runtimes = by_name["momo.runtime"]
    assert {r.parent.span_id for r in runtimes} == {b.context.span_id for b in batches}
    for b, r in zip(batches, runtimes, strict=False):
        assert b.start_time <= r.start_time <= r.end_time <= b.end_time
    assert "opentelemetry" in sys.modules
