"""Operations: liveness, readiness, Prometheus metrics, and (opt-in) fault-injection hooks.

/health and /ready need no API key; /metrics needs one unless `metrics_auth` is off (it names
collections and models); the hooks always do (service/auth.py decides, by path)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import ServicesDep
from service.errors import APIError
from service.schemas import Health, Readiness

router = APIRouter(tags=["ops"])


@router.get("/health", response_model=Health, summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    response_model=Readiness,
    summary="Readiness: a model is loaded and its inference workers run",
    responses={503: {"description": "Not ready (no model yet, or a dead inference worker)"}},
)
async def ready(services: ServicesDep) -> Any:
    ok, detail = services.engine.readiness()
    if ok:
        return detail
    reason = str(detail.get("reason"))
    body = {**detail, "error": {"message": reason, "type": "service_unavailable", "code": "not_ready"}}
    return JSONResponse(body, status_code=503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)


hooks = APIRouter(prefix="/internal/test", tags=["test hooks"], include_in_schema=False)


@hooks.post("/kill-worker/{queue}")
async def kill_worker(queue: str, services: ServicesDep) -> dict[str, Any]:
    """Make one inference thread die (only with MOMO_TEST_HOOKS=true): /ready must fail, requests 503."""
    handle = services.engine.current
    if handle is None or queue not in handle.queues:
        raise APIError(404, f"no queue {queue!r}", "not_found")
    await asyncio.to_thread(handle.queues[queue].kill_for_test)
    return {"killed": queue}
