"""FastAPI dependencies, as `Annotated[..., Depends(...)]` aliases (full-stack-fastapi-template style).

All are `async def`: FastAPI runs plain `def` dependencies in a thread pool, a hop per dependency and
request that the hot path does not need (none of these block).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

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


async def get_model(services: ServicesDep) -> AsyncIterator[ModelHandle]:
    """The served model, pinned for this request (a concurrent activation waits for it)."""
    with services.engine.use() as handle:
        yield handle


ModelDep = Annotated[ModelHandle, Depends(get_model)]
