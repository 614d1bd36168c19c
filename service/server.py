"""The HTTP server around the app: uvicorn, with this service's connection settings.

`uvicorn_config(app, settings)` is what `momo serve` runs (and what the tests and benchmarks run):
- `keep_alive_timeout_s` (default 120 s): longer than the idle timeouts of the usual clients and
  load balancers, so that the client side closes an idle connection first. uvicorn's own default
  (5 s) equals httpx's keep-alive expiry: a client reusing a connection the server is closing gets
  a reset (measured on main: 15 resets in a 64-client, 5-minute soak).
- `header_timeout_s` (default 15 s): a connection must deliver a complete request head this long
  after it opens (or after the first byte of a later request on it); otherwise it is closed.
  uvicorn has no such timeout: 500 connections sending one header byte a second stayed open for
  minutes (slowloris). Request *bodies* are not timed here; the reverse proxy in front
  (deploy/nginx.conf: header, body and send timeouts) is the answer to slow clients in deployment.
- `limit_concurrency` (default 1024): connections plus running requests; above it uvicorn answers
  503 (and closes) instead of taking more. With the header timeout, this bounds what slow or
  stalled clients can hold.

The header timeout is a subclass of uvicorn's httptools protocol (uvicorn accepts a protocol class
as `http`; httptools comes with uvicorn[standard]), hooked on the parser callbacks that mark the
start and the end of a request head. tests/service/test_connections.py holds it to that.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import Settings


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus: close a connection whose request head is not complete
    `header_timeout_s` after the connection opened, or after the first byte of a later request."""

    header_timeout_s: float = 15.0
    _header_timer: asyncio.TimerHandle | None = None

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection whose request head took over %gs", self.header_timeout_s)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()  # a later request on a kept-alive connection: its head is timed too

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)


class WorkerHttpProtocol(HeaderTimeoutProtocol):
    """The protocol of `momo serve --workers N` processes, named by import string (uvicorn spawns
    workers and imports it there); its timeout comes from MOMO_HEADER_TIMEOUT_S, as the worker's
    settings do."""

    header_timeout_s = float(os.environ.get("MOMO_HEADER_TIMEOUT_S", "15") or 15)


def protocol_class(settings: Settings) -> type[HeaderTimeoutProtocol]:
    return type("MoMoHttpProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": settings.header_timeout_s})


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration of `momo serve` for `app` (`overrides` win, e.g. a test's sockets)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": protocol_class(settings),
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "limit_concurrency": settings.limit_concurrency,
        "timeout_graceful_shutdown": int(settings.request_timeout_s),
        "log_config": None,
        "access_log": False,  # the app logs one structured line per request (service/middleware.py)
        "lifespan": "on",
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _cuda_device(settings: Settings) -> bool:
    if settings.device == "cuda":
        return True
    if settings.device == "cpu":
        return False
    try:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:  # pragma: no cover - onnxruntime is a serve dependency
        return False


def plan_workers(settings: Settings) -> tuple[int, int | None]:
    """(API processes, intra-op threads each). On CPU: one process per core, up to 8, and the cores
    split between them (measured on 2 cores: 2 processes x 1 thread served +67 % over 1 x 2). On a GPU
    one process owns the model on the device (several would each hold a copy and contend for it)."""
    cores = cpu_count()
    workers = settings.workers or (1 if _cuda_device(settings) else min(cores, 8))
    threads = settings.threads
    if threads is None and workers > 1:
        threads = max(1, cores // workers)
    return workers, threads


WORKER_HEALTHCHECK_S = 120


def serve_workers(settings: Settings, flags: dict[str, Any], workers: int, threads: int | None) -> None:
    """Run `workers` API processes on one listening socket (uvicorn's supervisor restarts one that
    dies). Each builds its app from MOMO_* variables, so the flags are handed over that way; the
    processes share the model store, the collection store and the job database (all multi-process
    safe) and a Prometheus multiprocess directory. An activation reaches every worker through the
    store's active pointer (`model_follow_s`)."""
    from uvicorn.supervisors import Multiprocess

    env = {f"MOMO_{name.upper()}": _env_value(value) for name, value in flags.items()}
    env["MOMO_WORKERS"] = str(workers)
    if threads is not None:
        env["MOMO_THREADS"] = str(threads)
    metrics_dir = tempfile.mkdtemp(prefix="momo-metrics-")
    env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ.update(env)
    config = uvicorn_config(
        "service.app:create_app",
        settings,
        factory=True,
        workers=workers,
        http="service.server:WorkerHttpProtocol",
        # uvicorn kills (and restarts) a worker that does not answer its health ping within this
        # time; a fresh worker imports torch and the app first, which on a busy 2-core machine took
        # longer than uvicorn's 5 s default: every worker was killed before it started, forever.
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
    )
    sock = config.bind_socket()
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(v.get_secret_value() if hasattr(v, "get_secret_value") else str(v) for v in value)
    return str(value)
