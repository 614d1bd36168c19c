"""Prometheus metrics, one registry per app (so several apps can live in one process, e.g. tests).

With several API processes (`momo serve --workers N`) the supervisor sets PROMETHEUS_MULTIPROC_DIR:
every worker writes its values there (prometheus_client's multiprocess mode) and a scrape, whichever
worker answers it, reads all of them — counters and histograms summed over the workers, the
in-flight gauge summed over the live ones, the model-info gauge per worker (a `pid` label, so a
rollout across workers is visible). Queue depth and worker liveness are read from the answering
worker's queues at scrape time (a worker whose inference thread died exits and is replaced).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)


class _QueueDepthCollector(Collector):
    """Reads queue depths at scrape time from whatever model is being served."""

    def __init__(self, depths: Callable[[], dict[str, tuple[int, bool]]]) -> None:
        self._depths = depths

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "momo_queue_depth", "Items waiting in each inference queue.", labels=["queue"]
        )
        alive = GaugeMetricFamily(
            "momo_worker_alive", "1 while the queue's inference thread runs.", labels=["queue"]
        )
        for name, (value, is_alive) in sorted(self._depths().items()):
            depth.add_metric([name], value)
            alive.add_metric([name], 1.0 if is_alive else 0.0)
        yield depth
        yield alive


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        self._depths: Callable[[], dict[str, tuple[int, bool]]] | None = None
        r = self.registry
        self.requests = Counter(
            "momo_http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "momo_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "momo_http_requests_in_flight", "Requests being handled.", registry=r, multiprocess_mode="livesum"
        )
        self.batch_size = Histogram(
            "momo_batch_size", "Items per inference batch.", ["queue"], buckets=BATCH_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "momo_inference_seconds",
            "Runtime time per inference batch.",
            ["queue"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_rejections = Counter(
            "momo_queue_rejections",
            "Requests refused with 429 because a queue was full.",
            ["queue"],
            registry=r,
        )
        self.inputs = Counter("momo_inputs", "Inputs processed by modality.", ["modality"], registry=r)
        self.text_inputs = self.inputs.labels("text")  # children looked up once, not per request
        self.image_inputs = self.inputs.labels("image")
        self.tokens = Counter("momo_text_tokens", "Text tokens processed.", registry=r)
        self.truncated = Counter("momo_texts_truncated", "Texts truncated to the model's limit.", registry=r)
        self.model_info = Gauge(
            "momo_model_info",
            "The served model version (value 1).",
            ["name", "version", "runtime", "device"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.model_swaps = Counter(
            "momo_model_activations", "Model activations by outcome.", ["outcome"], registry=r
        )
        self.collection_items = Gauge(
            "momo_collection_items",
            "Items per retrieval collection.",
            ["collection"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        # Fine-tuning jobs (section 6): the job API sets these per state.
        self.jobs = Gauge(
            "momo_fine_tune_jobs",
            "Fine-tuning jobs by state.",
            ["state"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.job_duration = Histogram(
            "momo_fine_tune_duration_seconds",
            "Fine-tuning job run time (start, or submission when it never started, to end) by final state.",
            ["state"],
            buckets=JOB_BUCKETS,
            registry=r,
        )

    def watch_queues(self, depths: Callable[[], dict[str, tuple[int, bool]]]) -> None:
        self._depths = depths
        self.registry.register(_QueueDepthCollector(depths))

    def render(self) -> bytes:
        """The exposition text: this app's registry, or with several workers all of theirs."""
        if not self.multiprocess:
            return bytes(generate_latest(self.registry))
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        if self._depths is not None:
            registry.register(_QueueDepthCollector(self._depths))
        return bytes(generate_latest(registry))

    def process_exit(self) -> None:
        """With several workers: drop this process's live gauges (in flight, model info)."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())

    def observe_batch(self, queue: str, size: int, seconds: float) -> None:
        self.batch_size.labels(queue).observe(size)
        self.inference_seconds.labels(queue).observe(seconds)

    def set_model(self, name: str, version: str, runtime: str, device: str) -> None:
        if self.multiprocess:  # values live in files: zero the old series (clear() would not)
            for labels in getattr(self, "_model_labels", []):
                self.model_info.labels(*labels).set(0)
        else:
            self.model_info.clear()
        self._model_labels = [(name, version, runtime, device)]
        self.model_info.labels(name, version, runtime, device).set(1)
