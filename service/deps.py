"""FastAPI dependencies: the one way a route reaches the app's services, as `Annotated` aliases
(full-stack-fastapi-template style) over `app.state.services`, which `create_app` builds once.

    ServicesDep     the `Services` bundle: settings, metrics, engine, collections, fetcher, jobs
    InferenceDep    the model pinned for this request, with the same bundle (routes that run the model)

One bundle, not an alias per service: FastAPI solves every dependency of every request, ~10 µs of
event-loop CPU each (measured; issue 17 found dependency solving ~30 % of a /v1/embeddings
request's loop CPU), so each route solves exactly one. Only this module (and `create_app`, which
fills it) reads `app.state` — tests/service/test_deps.py checks that.

Both are `async def`: FastAPI runs plain `def` dependencies in a thread pool, a hop per dependency and
request that the hot path does not need (none of these block).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

from fastapi import Depends, Request

from service.collections import CollectionStore
from service.engine import Engine
from service.metrics import Metrics
from service.model_handle import ModelHandle
from service.settings import Settings
from service.urls import ImageFetcher

if TYPE_CHECKING:  # the job service imports Celery; this module (every router, the middleware) need not
    from service.jobs.service import JobService


@dataclass(frozen=True)
class Services:
    """Everything a request handler may need, built once by `create_app` (`app.state.services`)."""

    settings: Settings
    metrics: Metrics
    engine: Engine
    collections: CollectionStore
    fetcher: ImageFetcher
    jobs: JobService  # fine-tuning jobs and dataset uploads (service/jobs)


class Inference(NamedTuple):
    """What a route that runs the model needs, in one dependency: the model pinned for this request
    (an activation meanwhile waits for it to finish) and the services."""

    model: ModelHandle
    services: Services


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


PINNED = "momo_pinned_model"


async def get_inference(request: Request) -> Inference:
    """Pin the served model for this request (503 when none is loaded). Not a generator dependency
    (an exit stack per request on the hot path): the pin is released by `RequestContextMiddleware`
    once the response is sent (`release_pinned`)."""
    services: Services = request.app.state.services
    state = request.scope["state"]
    pinned: ModelHandle | None = state.get(PINNED)
    if pinned is None:
        pinned = state[PINNED] = services.engine.acquire()
    return Inference(pinned, services)


def release_pinned(scope: MutableMapping[str, Any]) -> None:
    """Unpin the model this request pinned (called by the middleware when it is done)."""
    state = scope.get("state")
    pinned = state.pop(PINNED, None) if isinstance(state, dict) else None
    if pinned is not None:
        pinned._leave()


ServicesDep = Annotated[Services, Depends(get_services)]
InferenceDep = Annotated[Inference, Depends(get_inference)]
