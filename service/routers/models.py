"""GET /v1/models (OpenAI-style list plus MoMo details) and hot activation of a version."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from fastapi import APIRouter

from momo.artifact import MANIFEST_FILE
from momo.store import VersionInfo
from service.deps import ServicesDep
from service.engine import Engine
from service.errors import APIError
from service.json_files import read_json_object
from service.schemas import Activation, ModelDetail, ModelList
from service.validation import model_reference

router = APIRouter(prefix="/v1/models", tags=["models"])


def _created(value: str | None) -> int:
    if not value:
        return 0
    try:
        return int(dt.datetime.fromisoformat(value).timestamp())
    except ValueError:
        return 0


def _card(info: VersionInfo, engine: Engine) -> dict[str, Any]:
    current = engine.current
    serving = current is not None and Path(current.artifact.path).resolve() == info.path.resolve()
    heads = read_json_object(info.path / "heads.json").get("heads", {})
    config = read_json_object(info.path / "config.json")
    return {
        "id": info.reference,
        "object": "model",
        "created": _created(info.created_at),
        "owned_by": "momo",
        "name": info.name,
        "version": info.version,
        "active": info.active,
        "serving": serving,
        "runtime": current.kind if serving and current else None,
        "runtime_selection": current.runtime_choice if serving and current else None,
        "device": current.device if serving and current else None,
        "embedding_dim": config.get("embed_dim"),
        "heads": {
            name: {
                "input": str(spec.get("input")),
                "task": str(spec.get("task", "classification")),
                "num_labels": len(spec.get("labels", [])),
            }
            for name, spec in heads.items()
            if isinstance(spec, dict)
        },
        "parent": info.parent,
    }


def _cards(engine: Engine) -> list[dict[str, Any]]:
    infos = engine.store.list()
    cards = [_card(info, engine) for info in infos]
    current = engine.current
    if current is not None and not any(c["serving"] for c in cards):  # served from a path outside the store
        cards.append(
            {
                "id": current.reference,
                "object": "model",
                "created": int(current.loaded_at),
                "owned_by": "momo",
                "name": current.name,
                "version": current.version,
                "active": False,
                "serving": True,
                "runtime": current.kind,
                "runtime_selection": current.runtime_choice,
                "device": current.device,
                "embedding_dim": current.dim,
                "heads": {
                    n: {"input": s.input, "task": s.task, "num_labels": len(s.labels)}
                    for n, s in current.heads.items()
                },
                "parent": current.artifact.manifest.parent,
            }
        )
    return cards


@router.get("", response_model=ModelList, summary="Model versions in the store (and which one is served)")
async def list_models(services: ServicesDep) -> dict[str, Any]:
    return {"object": "list", "data": await asyncio.to_thread(_cards, services.engine)}


def _metrics(card: dict[str, Any], engine: Engine) -> dict[str, Any]:
    """The metrics in a listed version's manifest, read from disk (`momo eval` records new figures
    into the manifest of a version that may be serving)."""
    current = engine.current
    if card["serving"] and current is not None:  # also when served from a path outside the store
        path = Path(current.artifact.path)
    else:
        path = engine.store.root / str(card["name"]) / str(card["version"])
    metrics = read_json_object(path / MANIFEST_FILE).get("metrics")
    return metrics if isinstance(metrics, dict) else {}


@router.get(
    "/{model_id}",
    response_model=ModelDetail,
    summary="One model version (name:version), with the figures of its manifest",
)
async def get_model(model_id: str, services: ServicesDep) -> dict[str, Any]:
    model_reference(model_id, "model_id")
    engine = services.engine
    for card in await asyncio.to_thread(_cards, engine):
        if model_id in (card["id"],) or (card["serving"] and model_id in ("momo", "active", card["name"])):
            return {**card, "metrics": await asyncio.to_thread(_metrics, card, engine)}
    raise APIError(404, f"no model {model_id!r}; list them with GET /v1/models", "model_not_found")


@router.post(
    "/{model_id}/activate",
    response_model=Activation,
    summary="Serve another version now (no dropped requests) and make it the store's active one",
)
async def activate_model(model_id: str, services: ServicesDep) -> dict[str, Any]:
    model_reference(model_id, "model_id")
    engine = services.engine
    previous = engine.current.reference if engine.current else None
    _handle, changed = await engine.activate(model_id)
    for card in await asyncio.to_thread(_cards, engine):
        if card["serving"]:
            return {"object": "model.activation", "model": card, "previous": previous, "changed": changed}
    raise APIError(500, "activated model is not listed", "internal_error")  # pragma: no cover
