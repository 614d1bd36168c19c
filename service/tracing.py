"""OpenTelemetry tracing, off by default (`tracing=true` turns it on; `pip install momo[tracing]`).

Spans, exported over OTLP/HTTP (`tracing_endpoint`, else the OTEL_EXPORTER_OTLP_* variables):
- the request: `opentelemetry-instrumentation-fastapi` (method, route, status; /health, /ready and
  /metrics are left out);
- `momo.queue_wait`: one per input, a child of its request, from submit to the start of its batch;
- `momo.batch`: one per batch (queue, op, size), linked to the request of every input in it, with
  its child `momo.runtime` (the model call alone).

The batch spans are recorded by the post stage after the fact, with the stage threads' own
timestamps, so the core thread pays nothing for them. With tracing off, none of this is imported and
the batcher's hooks are None (one `if` per batch).
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("momo.service.tracing")

EXCLUDED_URLS = "health,ready,metrics"


class BatchTracer:
    """The batcher's hooks: `capture()` on the event loop at submit, `record()` from the post thread."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import context, trace

        self.provider = provider  # the SDK TracerProvider: its processors export the spans
        self._tracer = provider.get_tracer("momo.service")
        self._context = context
        self._trace = trace

    def capture(self) -> Any:
        return self._context.get_current()

    def record(
        self,
        queue: str,
        op: str,
        items: list[tuple[Any, float]],  # (captured context, enqueued at, monotonic seconds)
        started: float,  # batch taken by core (monotonic)
        run_started: float,
        run_ended: float,
    ) -> None:
        offset = time.time_ns() - time.monotonic_ns()

        def ns(t: float) -> int:
            return int(t * 1e9) + offset

        links = []
        for ctx, enqueued in items:
            span = self._tracer.start_span("momo.queue_wait", context=ctx, start_time=ns(enqueued))
            span.set_attribute("momo.queue", queue)
            span.end(end_time=ns(started))
            parent = self._trace.get_current_span(ctx).get_span_context()
            if parent.is_valid:
                links.append(self._trace.Link(parent))
        batch = self._tracer.start_span(
            "momo.batch",
            context=self._context.Context(),  # a root: a batch serves several requests (links)
            links=links,
            start_time=ns(started),
            attributes={"momo.queue": queue, "momo.op": op, "momo.batch_size": len(items)},
        )
        runtime = self._tracer.start_span(
            "momo.runtime", context=self._trace.set_span_in_context(batch), start_time=ns(run_started)
        )
        runtime.end(end_time=ns(run_ended))
        batch.end(end_time=ns(run_ended))


def setup_tracing(app: Any, settings: Any, exporter: Any = None) -> BatchTracer:
    """Instrument `app` and return the batcher's tracer. `exporter` replaces OTLP (tests)."""
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            f"tracing=true needs the OpenTelemetry packages ({exc.name}): pip install 'momo[tracing]'"
        ) from exc
    provider = TracerProvider(resource=Resource.create({"service.name": settings.tracing_service_name}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.tracing_endpoint
        exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=EXCLUDED_URLS)
    log.info("tracing on: OTLP to %s", settings.tracing_endpoint or "the OTEL_EXPORTER_OTLP_* default")
    return BatchTracer(provider)
