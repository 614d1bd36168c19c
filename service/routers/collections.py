"""Retrieval collections: create/list/get/delete, add (upsert) and delete items, search.

Thin: the store (`service.collections`, embedded or PostgreSQL; this router does not know which)
does the work, in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fastapi import APIRouter, Path

from service.collections import CollectionError, CollectionInfo, CollectionStore, Hit, Item, NewItem
from service.deps import InferenceDep, Services, ServicesDep
from service.errors import APIError, bad_request
from service.inputs import Parsed, parse_one
from service.model_handle import ModelHandle
from service.routers.embeddings import embed_parsed, usage
from service.schemas import (
    CollectionCreate,
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
from service.schemas import (
    CollectionInfo as CollectionInfoOut,
)

router = APIRouter(prefix="/v1/collections", tags=["collections"])
NameParam = Path(..., description="Collection name")
MAX_METADATA_BYTES = 16 * 1024


def _error(exc: CollectionError) -> APIError:
    return APIError(exc.status, exc.message, exc.code)


def _info(info: CollectionInfo, serving: str | None) -> dict[str, Any]:
    return {
        "object": "collection",
        "name": info.name,
        "dim": info.dim,
        "model": info.model,
        "index": info.index,
        "count": info.count,
        "counts": info.counts,
        "created_at": info.created_at,
        "description": info.description,
        "metadata": info.metadata,
        "searchable": serving == info.model,
    }


def _serving(services: Services) -> str | None:
    """The reference of the model being served (None while none is loaded)."""
    current = services.engine.current
    return current.reference if current else None


def _item(item: Item | Hit) -> dict[str, Any]:
    return {
        "id": item.id,
        "modality": item.modality,
        "metadata": item.metadata,
        "text": item.text,
        "thumbnail": item.thumbnail,
    }


async def _call(function: Any, *args: Any) -> Any:
    """Run a blocking store call in a thread; its caller-visible failures become API errors."""
    try:
        return await asyncio.to_thread(function, *args)
    except CollectionError as exc:
        raise _error(exc) from exc


async def _get(store: CollectionStore, name: str) -> CollectionInfo:
    info: CollectionInfo = await _call(store.get, name)
    return info


def _same_model(collection: CollectionInfo, handle: ModelHandle) -> None:
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


@router.post("", status_code=201, response_model=CollectionInfoOut, summary="Create a collection")
async def create_collection(body: CollectionCreate, inference: InferenceDep) -> dict[str, Any]:
    handle, store = inference.model, inference.services.collections
    metadata = _metadata(body.metadata, "metadata")

    def create() -> CollectionInfo:
        return store.create(
            body.name,
            handle.dim,
            handle.reference,
            index=body.index,
            description=body.description,
            metadata=metadata,
        )

    return _info(await _call(create), handle.reference)


@router.get("", response_model=CollectionList, summary="List collections")
async def list_collections(services: ServicesDep) -> dict[str, Any]:
    serving = _serving(services)
    collections = await _call(services.collections.list_collections)
    return {"object": "list", "data": [_info(c, serving) for c in collections]}


@router.get("/{name}", response_model=CollectionInfoOut, summary="Describe a collection")
async def get_collection(services: ServicesDep, name: str = NameParam) -> dict[str, Any]:
    serving = _serving(services)
    return _info(await _get(services.collections, name), serving)


@router.delete("/{name}", response_model=Deleted, summary="Delete a collection and its items")
async def delete_collection(services: ServicesDep, name: str = NameParam) -> dict[str, Any]:
    await _call(services.collections.delete, name)
    with contextlib.suppress(KeyError):
        services.metrics.collection_items.remove(name)
    return {"id": name, "object": "collection", "deleted": True}


@router.post("/{name}/items", response_model=ItemsAdded, summary="Add or replace items (upsert by id)")
async def add_items(body: ItemsAdd, inference: InferenceDep, name: str = NameParam) -> dict[str, Any]:
    handle, services = inference.model, inference.services
    settings, metrics, store = services.settings, services.metrics, services.collections
    _same_model(await _get(store, name), handle)
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
        Parsed(text=item.text)
        if item.text is not None
        else Parsed(image=item.image, thumbnail=item.thumbnail)
        for item in body.items
    ]
    metadata = [_metadata(item.metadata, f"items[{i}].metadata") for i, item in enumerate(body.items)]
    embedded = await embed_parsed(handle, parsed, services, param="items")
    new = [
        NewItem(item.id, p.modality, vector, meta, item.text, thumbnail)
        for item, p, vector, meta, thumbnail in zip(
            body.items, parsed, embedded.vectors, metadata, embedded.thumbnails, strict=True
        )
    ]
    written = await _call(store.upsert, name, new)
    metrics.collection_items.labels(name).set(written.count)
    return {
        "object": "collection.items",
        "collection": name,
        "added": written.added,
        "updated": written.updated,
        "ids": ids,
        "usage": usage(embedded.tokens, embedded.truncated),
    }


@router.post("/{name}/items/delete", response_model=ItemsDeleted, summary="Delete items by id")
async def delete_items(body: ItemsDelete, services: ServicesDep, name: str = NameParam) -> dict[str, Any]:
    written = await _call(services.collections.delete_items, name, body.ids)
    services.metrics.collection_items.labels(name).set(written.count)
    return {
        "object": "collection.items.deleted",
        "collection": name,
        "deleted": written.deleted,
        "missing": written.missing,
    }


@router.get("/{name}/items/{item_id}", response_model=ItemOut, summary="Read one item (without its vector)")
async def get_item(services: ServicesDep, item_id: str, name: str = NameParam) -> dict[str, Any]:
    item = await _call(services.collections.get_item, name, item_id)
    if item is None:
        raise APIError(404, f"collection {name!r} has no item {item_id!r}", "item_not_found")
    return {"object": "collection.item", **_item(item)}


@router.delete("/{name}/items/{item_id}", response_model=ItemsDeleted, summary="Delete one item")
async def delete_item(services: ServicesDep, item_id: str, name: str = NameParam) -> dict[str, Any]:
    written = await _call(services.collections.delete_items, name, [item_id])
    if not written.deleted:
        raise APIError(404, f"collection {name!r} has no item {item_id!r}", "item_not_found")
    services.metrics.collection_items.labels(name).set(written.count)
    return {
        "object": "collection.items.deleted",
        "collection": name,
        "deleted": written.deleted,
        "missing": [],
    }


@router.post(
    "/{name}/search", response_model=SearchResponse, summary="Nearest items to a text or image query"
)
async def search(body: SearchRequest, inference: InferenceDep, name: str = NameParam) -> dict[str, Any]:
    handle, services = inference.model, inference.services
    settings, store = services.settings, services.collections
    _same_model(await _get(store, name), handle)
    if body.top_k > settings.max_top_k:
        raise bad_request(f"top_k is at most {settings.max_top_k}", "invalid_top_k", "top_k")
    parsed = parse_one(body.query, None, "query", allow_pair=False)
    embedded = await embed_parsed(handle, [parsed], services, param="query")
    flt = body.filter
    hits: list[Hit] = await _call(
        store.search,
        name,
        embedded.vectors[0],
        body.top_k,
        flt.modality if flt else None,
        flt.metadata if flt else None,
    )
    return {
        "object": "list",
        "collection": name,
        "model": handle.reference,
        "data": [{**_item(h), "score": h.score} for h in hits],
        "usage": usage(embedded.tokens, embedded.truncated),
    }
