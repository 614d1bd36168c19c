"""FastAPI dependencies, as `Annotated[..., Depends(...)]` aliases (full-stack-fastapi-template style).

All are `async def`: FastAPI runs plain `def` dependencies in a thread pool, a hop per dependency and
request that the hot path does not need (none of these block).
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi

from service.collections import CollectionStore
from service.engine import Engine, ModelHandle
from service.errors import APIError
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


async def require_api_key(request: Request, services: ServicesDep) -> None:
    """`Authorization: Bearer <key>` must carry one of the configured keys (unless auth is disabled).

    The header is read directly (not through `HTTPBearer`: one dependency less per request); the
    Bearer scheme is declared in the OpenAPI document by `declare_bearer_auth`, so /docs can send it.
    """
    settings = services.settings
    if settings.auth_disabled:
        return
    challenge = {"WWW-Authenticate": "Bearer"}
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if not token or scheme.lower() != "bearer":
        raise APIError(
            401, "missing API key: send 'Authorization: Bearer <key>'", "missing_api_key", headers=challenge
        )
    given = token.encode("utf-8")
    if not any(hmac.compare_digest(given, key.encode("utf-8")) for key in settings.api_keys):
        raise APIError(401, "invalid API key", "invalid_api_key", headers=challenge)


Authorized = Depends(require_api_key)


def declare_bearer_auth(app: FastAPI, prefixes: tuple[str, ...] = ("/v1/",)) -> None:
    """Add the Bearer security scheme to the OpenAPI document for the authenticated routes."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from MOMO_API_KEYS.",
                }
            }
            for path, operations in schema.get("paths", {}).items():
                if path.startswith(prefixes):
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
