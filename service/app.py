"""The app factory: `create_app(settings)` builds a FastAPI app whose lifespan loads the model once.

    uvicorn "service.app:create_app" --factory      # settings from MOMO_* environment variables
    momo serve --store model_store                  # the same, with flags

Lifespan: open the collection store (migrating its schema and any old-format collections), load
and warm up the served model (the store's active version unless `model` is set), start its
inference threads; on shutdown (after uvicorn has let in-flight requests finish) drain the queues,
close the runtime and the collection store.
With no model in the store the app still starts: /health answers, /ready says why it is not ready,
model endpoints answer 503, and activating a version (POST /v1/models/{id}/activate) brings it up.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from service.auth import APIKeyMiddleware, declare_bearer_auth
from service.collections import open_store, store_from_settings
from service.deps import Services
from service.engine import Engine
from service.errors import install_error_handlers
from service.heap import freeze_heap
from service.jobs import router as jobs_router
from service.jobs.service import JobService
from service.jobs.uploads import UploadBodyLimitMiddleware
from service.logs import configure_logging
from service.metrics import Metrics
from service.middleware import RequestContextMiddleware
from service.responses import JSONResponse
from service.routers import classify, collections, embeddings, models, ops, ui, vqa
from service.settings import Settings
from service.urls import ImageFetcher

log = logging.getLogger("momo.service")

DESCRIPTION = """MoMo — one compact shared image+text encoder behind HTTP: OpenAI-compatible embeddings for
texts and images, retrieval collections, zero-shot and fine-tuned classification, visual question
answering. Authenticate with `Authorization: Bearer <key>` (unless the server runs with auth disabled).
Errors are `{"error": {"message", "type", "code"}}`."""


def create_app(settings: Settings | None = None, span_exporter: Any = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    configure_logging(settings.log_level, settings.log_json)
    metrics = Metrics()
    engine = Engine(settings, metrics)
    collection_store = store_from_settings(settings)  # embedded or PostgreSQL, by collections_url
    fetcher = ImageFetcher(
        enabled=settings.image_urls_enabled,
        timeout_s=settings.image_url_timeout_s,
        max_bytes=settings.max_image_bytes,
        max_redirects=settings.image_url_max_redirects,
    )

    jobs = JobService(settings, metrics)  # fine-tuning jobs (service/jobs): records, sweeper, embedded worker

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Schema creation and migrations, one process at a time: `--workers N` start side by side on
        # one data_dir, and two processes creating the same tables at once fail ("already exists").
        async with startup_lock(settings.data_dir / ".startup.lock"):
            await jobs.start()  # refuses to start on a job-database schema mismatch
            # schema migrations; collections of the old on-disk format are copied in on first start
            await asyncio.to_thread(open_store, collection_store, settings.data_dir / "collections")
        for collection in await asyncio.to_thread(collection_store.list_collections):
            metrics.collection_items.labels(collection.name).set(collection.count)
        await engine.start()
        if settings.gc_freeze:
            await asyncio.to_thread(freeze_heap)
        background = []
        if settings.follow_interval_s > 0:  # activations made by other workers / replicas
            background.append(asyncio.create_task(engine.follow_active(settings.follow_interval_s)))
        if (settings.workers or 1) > 1:  # a dead inference thread ends this worker; uvicorn starts anew
            background.append(asyncio.create_task(engine.watch_workers(1.0, _exit_worker)))
        log.info(
            "ready" if engine.current else "started without a model",
            extra={"auth": "on" if settings.auth_enabled else "off"},
        )
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await engine.close()
            await asyncio.to_thread(collection_store.close)
            await jobs.stop()
            metrics.process_exit()
            log.info("stopped")

    app = FastAPI(
        title="MoMo",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs" if settings.docs_enabled else None,
        redoc_url="/redoc" if settings.docs_enabled else None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
        default_response_class=JSONResponse,  # service/responses.py: lone surrogates never fail a response
        # FastAPI's native OpenTelemetry off: tracing is ours (service/tracing.py, opt-in), and the
        # native layer would otherwise check for providers on every request
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    # what routes reach, through service/deps.py (the only reader of app.state)
    app.state.services = Services(settings, metrics, engine, collection_store, fetcher, jobs)

    install_error_handlers(app)
    for router in (
        ops.router,
        embeddings.router,
        collections.router,
        classify.router,
        vqa.router,
        models.router,
        jobs_router.router,
    ):
        app.include_router(router)
    if settings.test_hooks:
        app.include_router(ops.hooks)
    if settings.ui_enabled:
        ui.mount(app)
    declare_bearer_auth(app, public_paths(settings))
    # add_middleware prepends: the last one added runs first (outermost).
    # the body limit, with dataset uploads (POST /v1/files) streamed under their own max_upload_bytes
    app.add_middleware(
        UploadBodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        upload_max_bytes=settings.max_upload_bytes,
    )
    if settings.auth_enabled:  # outside the body limit: a request without a key never reaches it
        app.add_middleware(APIKeyMiddleware, keys=settings.api_keys, public_paths=public_paths(settings))
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        access_log_enabled=settings.access_log,
        access_log_sample=settings.access_log_sample,
    )
    if settings.tracing:  # outermost: the request span covers every layer; imported only when on
        from service.tracing import setup_tracing

        engine.tracer = setup_tracing(app, settings, exporter=span_exporter)
    return app


@asynccontextmanager
async def startup_lock(path: Path) -> AsyncIterator[None]:
    """An exclusive lock on `path` across processes (flock; released when the file is closed)."""
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    with path.open("a") as handle:
        await asyncio.to_thread(fcntl.flock, handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _exit_worker(reason: str) -> None:
    log.error("%s: this API worker exits so that a fresh one takes its place", reason)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful shutdown; its supervisor restarts it


def public_paths(settings: Settings) -> set[str]:
    """The paths served without an API key; every other one needs a key (deny by default). An entry
    ending in "/" covers the paths under it."""
    paths = {"/health", "/ready"}
    if settings.docs_enabled:
        paths |= {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
    if not settings.metrics_auth:
        paths.add("/metrics")
    if settings.ui_enabled:  # the page's files; the page sends the key the user types to the API
        paths |= {"/ui", "/ui/"}
    return paths
