"""FastAPI dependencies, as `Annotated[..., Depends(...)]` aliases (full-stack-fastapi-template style).

All are `async def`: FastAPI runs plain `def` dependencies in a thread pool, a hop per dependency and
request that the hot path does not need (none of these block).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from service.collections import CollectionStore
from service.engine import Engine, ModelHandle
from service.metrics import Metrics
from service.settings import Settings
from service.urls import ImageFetcher


@dataclass(frozen=True)
class Services:
    """Everything a request handler may need, built once by `create_app` (`app.state.services`).
    One dependency instead of five keeps FastAPI's per-request dependency solving cheap."""

    settings: Settings
    metrics: Metrics
    engine: Engine
    collections: CollectionStore
    fetcher: ImageFetcher


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_collections(request: Request) -> CollectionStore:
    store: CollectionStore = request.app.state.collections
    return store


async def get_fetcher(request: Request) -> ImageFetcher:
    fetcher: ImageFetcher = request.app.state.fetcher
    return fetcher


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
CollectionsDep = Annotated[CollectionStore, Depends(get_collections)]
FetcherDep = Annotated[ImageFetcher, Depends(get_fetcher)]


PINNED = "momo_pinned_model"


async def get_model(request: Request) -> ModelHandle:
    """The served model, pinned for this request (a concurrent activation waits for it). Not a
    generator dependency (an exit stack per request on the hot path): the pin is released by
    `RequestContextMiddleware` once the response is sent (`release_pinned`)."""
    return pin_model(request)


def pin_model(request: Request) -> ModelHandle:
    """`get_model` without the dependency machinery, for the hot path (see embeddings.py)."""
    state = request.scope["state"]
    pinned: ModelHandle | None = state.get(PINNED)
    if pinned is None:
        engine: Engine = request.app.state.engine
        pinned = state[PINNED] = engine.acquire()
    return pinned


def release_pinned(scope: MutableMapping[str, Any]) -> None:
    """Unpin the model this request pinned (called by the middleware when it is done)."""
    state = scope.get("state")
    pinned = state.pop(PINNED, None) if isinstance(state, dict) else None
    if pinned is not None:
        pinned._leave()


ModelDep = Annotated[ModelHandle, Depends(get_model)]
