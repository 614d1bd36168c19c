"""FastAPI dependencies, as `Annotated[..., Depends(...)]` aliases (full-stack-fastapi-template style)."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.engine import Engine, ModelHandle
from service.errors import APIError
from service.metrics import Metrics
from service.retrieval import CollectionStore
from service.settings import Settings
from service.urls import ImageFetcher

_bearer = HTTPBearer(auto_error=False, description="An API key from MOMO_API_KEYS.")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_collections(request: Request) -> CollectionStore:
    store: CollectionStore = request.app.state.collections
    return store


def get_fetcher(request: Request) -> ImageFetcher:
    fetcher: ImageFetcher = request.app.state.fetcher
    return fetcher


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
CollectionsDep = Annotated[CollectionStore, Depends(get_collections)]
FetcherDep = Annotated[ImageFetcher, Depends(get_fetcher)]


def get_model(engine: EngineDep) -> Iterator[ModelHandle]:
    """The served model, pinned for this request (a concurrent activation waits for it)."""
    with engine.use() as handle:
        yield handle


ModelDep = Annotated[ModelHandle, Depends(get_model)]


def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """`Authorization: Bearer <key>` must carry one of the configured keys (unless auth is disabled)."""
    if settings.auth_disabled:
        return
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or not credentials.credentials:
        raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", "missing_api_key",
                       headers=challenge)
    given = credentials.credentials.encode("utf-8")
    if not any(hmac.compare_digest(given, key.encode("utf-8")) for key in settings.api_keys):
        raise APIError(401, "invalid API key", "invalid_api_key", headers=challenge)


Authorized = Depends(require_api_key)
