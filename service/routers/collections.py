"""Retrieval collections: create/list/get/delete, add (upsert) and delete items, search."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fastapi import APIRouter, Path

from service.deps import CollectionsDep, EngineDep, MetricsDep, ModelDep, ServicesDep
from service.engine import ModelHandle
from service.errors import APIError, bad_request
from service.inputs import Parsed, parse_one
from service.retrieval import Collection, CollectionError, CollectionStore, NewItem
from service.routers.embeddings import embed_parsed, usage
from service.schemas import (
    CollectionCreate,
    CollectionInfo,
    CollectionList,
    Deleted,
    ItemOut,
    ItemsAdd,
    ItemsAdded,
    ItemsDelete,
    ItemsDeleted,
    SearchRequest,
    SearchResponse,
)

router = APIRouter(prefix="/v1/collections", tags=["collections"])
NameParam = Path(..., description="Collection name")
MAX_METADATA_BYTES = 16 * 1024


def _error(exc: CollectionError) -> APIError:
    return APIError(exc.status, exc.message, exc.code)


def _info(collection: Collection, serving: str | None) -> dict[str, Any]:
    return {"object": "collection", **collection.info(), "searchable": serving == collection.model}


def _get(store: CollectionStore, name: str) -> Collection:
    try:
        return store.get(name)
    except CollectionError as exc:
        raise _error(exc) from exc


def _same_model(collection: Collection, handle: ModelHandle) -> None:
    if collection.model != handle.reference or collection.dim != handle.dim:
        raise APIError(
            409,
            f"collection {collection.name!r} holds vectors of model {collection.model}, but "
            f"{handle.reference} is being served; its vectors are not comparable. Activate "
            f"{collection.model} again, or delete and re-create the collection to re-index it.",
            "collection_model_mismatch",
        )


def _metadata(value: dict[str, Any] | None, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if len(json.dumps(value)) > MAX_METADATA_BYTES:
        raise bad_request(
            f"{param} is larger than {MAX_METADATA_BYTES} bytes as JSON", "metadata_too_large", param
        )
    return value


@router.post("", status_code=201, response_model=CollectionInfo, summary="Create a collection")
async def create_collection(
    body: CollectionCreate, store: CollectionsDep, handle: ModelDep
) -> dict[str, Any]:
    metadata = _metadata(body.metadata, "metadata")
    try:
        collection = await asyncio.to_thread(
            store.create, body.name, handle.dim, handle.reference, body.description, metadata
        )
    except CollectionError as exc:
        raise _error(exc) from exc
    return _info(collection, handle.reference)


@router.get("", response_model=CollectionList, summary="List collections")
async def list_collections(store: CollectionsDep, engine: EngineDep) -> dict[str, Any]:
    serving = engine.current.reference if engine.current else None
    return {"object": "list", "data": [_info(c, serving) for c in store.list()]}


@router.get("/{name}", response_model=CollectionInfo, summary="Describe a collection")
async def get_collection(store: CollectionsDep, engine: EngineDep, name: str = NameParam) -> dict[str, Any]:
    serving = engine.current.reference if engine.current else None
    return _info(_get(store, name), serving)


@router.delete("/{name}", response_model=Deleted, summary="Delete a collection and its files")
async def delete_collection(
    store: CollectionsDep, metrics: MetricsDep, name: str = NameParam
) -> dict[str, Any]:
    try:
        await asyncio.to_thread(store.delete, name)
    except CollectionError as exc:
        raise _error(exc) from exc
    with contextlib.suppress(KeyError):
        metrics.collection_items.remove(name)
    return {"id": name, "object": "collection", "deleted": True}


@router.post("/{name}/items", response_model=ItemsAdded, summary="Add or replace items (upsert by id)")
async def add_items(
    body: ItemsAdd,
    handle: ModelDep,
    services: ServicesDep,
    name: str = NameParam,
) -> dict[str, Any]:
    settings, metrics = services.settings, services.metrics
    collection = _get(services.collections, name)
    _same_model(collection, handle)
    if not body.items:
        raise bad_request("items must not be empty", "empty_input", "items")
    if len(body.items) > settings.max_items_per_request:
        raise bad_request(
            f"{len(body.items)} items in one request; the limit is {settings.max_items_per_request}",
            "too_many_inputs",
            "items",
        )
    ids = [item.id for item in body.items]
    if len(set(ids)) != len(ids):
        raise bad_request("item ids must be unique within one request", "duplicate_ids", "items")
    parsed = [
        Parsed(text=item.text) if item.text is not None else Parsed(image=item.image) for item in body.items
    ]
    metadata = [_metadata(item.metadata, f"items[{i}].metadata") for i, item in enumerate(body.items)]
    vectors, tokens, truncated = await embed_parsed(handle, parsed, services, param="items")
    new = [
        NewItem(item.id, p.modality, vector, meta, item.text)
        for item, p, vector, meta in zip(body.items, parsed, vectors, metadata, strict=True)
    ]
    try:
        added, updated = await asyncio.to_thread(collection.upsert, new)
    except CollectionError as exc:
        raise _error(exc) from exc
    metrics.collection_items.labels(name).set(collection.count)
    return {
        "object": "collection.items",
        "collection": name,
        "added": added,
        "updated": updated,
        "ids": ids,
        "usage": usage(tokens, truncated),
    }


@router.post("/{name}/items/delete", response_model=ItemsDeleted, summary="Delete items by id")
async def delete_items(
    body: ItemsDelete, store: CollectionsDep, metrics: MetricsDep, name: str = NameParam
) -> dict[str, Any]:
    collection = _get(store, name)
    try:
        deleted, missing = await asyncio.to_thread(collection.delete, body.ids)
    except CollectionError as exc:
        raise _error(exc) from exc
    metrics.collection_items.labels(name).set(collection.count)
    return {"object": "collection.items.deleted", "collection": name, "deleted": deleted, "missing": missing}


@router.get("/{name}/items/{item_id}", response_model=ItemOut, summary="Read one item (without its vector)")
async def get_item(store: CollectionsDep, item_id: str, name: str = NameParam) -> dict[str, Any]:
    item = _get(store, name).get(item_id)
    if item is None:
        raise APIError(404, f"collection {name!r} has no item {item_id!r}", "item_not_found")
    return {
        "object": "collection.item",
        "id": item.id,
        "modality": item.modality,
        "metadata": item.metadata,
        "text": item.text,
    }


@router.delete("/{name}/items/{item_id}", response_model=ItemsDeleted, summary="Delete one item")
async def delete_item(
    store: CollectionsDep, metrics: MetricsDep, item_id: str, name: str = NameParam
) -> dict[str, Any]:
    collection = _get(store, name)
    deleted, _missing = await asyncio.to_thread(collection.delete, [item_id])
    if not deleted:
        raise APIError(404, f"collection {name!r} has no item {item_id!r}", "item_not_found")
    metrics.collection_items.labels(name).set(collection.count)
    return {"object": "collection.items.deleted", "collection": name, "deleted": deleted, "missing": []}


@router.post(
    "/{name}/search", response_model=SearchResponse, summary="Nearest items to a text or image query"
)
async def search(
    body: SearchRequest,
    handle: ModelDep,
    services: ServicesDep,
    name: str = NameParam,
) -> dict[str, Any]:
    settings = services.settings
    collection = _get(services.collections, name)
    _same_model(collection, handle)
    if body.top_k > settings.max_top_k:
        raise bad_request(f"top_k is at most {settings.max_top_k}", "invalid_top_k", "top_k")
    parsed = parse_one(body.query, None, "query", allow_pair=False)
    vectors, tokens, truncated = await embed_parsed(handle, [parsed], services, param="query")
    flt = body.filter
    hits = await asyncio.to_thread(
        collection.search,
        vectors[0],
        body.top_k,
        flt.modality if flt else None,
        flt.metadata if flt else None,
    )
    return {
        "object": "list",
        "collection": name,
        "model": handle.reference,
        "data": [
            {"id": h.id, "score": h.score, "modality": h.modality, "metadata": h.metadata, "text": h.text}
            for h in hits
        ],
        "usage": usage(tokens, truncated),
    }
