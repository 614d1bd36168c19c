"""The collection interface: what the routers call, whichever backend holds the data.

A collection has a name, the dimension and the model version (`name:version`) of its vectors, and
items: an id (upsert replaces an item with the same id), a modality (`text` or `image`), a unit
vector, JSON metadata, the text of a text item and an optional image thumbnail (a data URI).
Scores are inner products of unit vectors, i.e. cosine similarities, best first (ties by id).

Every method is blocking (the routers run them in a thread) and safe to call from many threads and
processes at once: an acknowledged write is one committed database transaction.
"""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MODALITIES = ("text", "image")
IndexKind = Literal["auto", "flat", "hnsw"]
INDEX_KINDS: tuple[IndexKind, ...] = ("auto", "flat", "hnsw")


class CollectionError(Exception):
    """A caller-visible failure; the router renders it with `status` and `code`."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def not_found(name: str) -> CollectionError:
    return CollectionError(404, f"no collection named {name!r}", "collection_not_found")


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise CollectionError(
            400,
            "collection name must be 1-64 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            "invalid_collection_name",
        )


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    dim: int
    model: str  # name:version of the model that produced the vectors
    index: IndexKind  # auto: exact below the ANN threshold, HNSW above; flat: always exact
    counts: dict[str, int]  # items per modality
    created_at: str | None = None
    description: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(self.counts.values())


@dataclass
class NewItem:
    id: str
    modality: str
    vector: np.ndarray  # (dim,) float32, unit norm
    metadata: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    thumbnail: str | None = None  # data:image/...;base64,...


@dataclass(frozen=True)
class Item:
    id: str
    modality: str
    metadata: dict[str, Any]
    text: str | None
    thumbnail: str | None


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    modality: str
    metadata: dict[str, Any]
    text: str | None
    thumbnail: str | None


@dataclass(frozen=True)
class Written:
    """What an upsert or delete did, and the collection's size after it."""

    added: int = 0
    updated: int = 0
    deleted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    count: int = 0


@dataclass(frozen=True)
class SearchTuning:
    """ANN settings shared by both backends (service settings `ann_*`)."""

    threshold: int = 20_000  # `auto` collections use HNSW from this many items of a modality
    ef_search: int = 400  # HNSW candidate list per query: higher = better recall, slower
    rescore: int = 2  # ANN fetches top_k * rescore candidates, re-scored exactly (1 = no extra)
    m: int = 32  # HNSW links per node
    ef_construction: int = 64

    def use_ann(self, kind: str, size: int) -> bool:
        return kind == "hnsw" or (kind == "auto" and size >= self.threshold)


def info_from_row(row: Any, metadata: dict[str, Any]) -> CollectionInfo:
    """A `collections` row (either backend's row type) as a `CollectionInfo`."""
    return CollectionInfo(
        name=row["name"],
        dim=int(row["dim"]),
        model=row["model"],
        index=row["index_kind"],
        counts={"text": int(row["text_count"]), "image": int(row["image_count"])},
        created_at=row["created_at"],
        description=row["description"],
        metadata=metadata,
    )


def _canonical(value: Any) -> Any:
    """JSON values compared as PostgreSQL's jsonb compares them: 1 == 1.0, key order ignored."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    """The one text form of a metadata value, for equality filters (the embedded store's index)."""
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def count_changes(
    items: Sequence[NewItem], existing: dict[str, str], counts: dict[str, int], max_items: int, name: str
) -> tuple[dict[str, int], int]:
    """Counts per modality after upserting `items` over `existing` (id -> modality); refuses growth
    past `max_items`. Returns (new counts, how many ids were new)."""
    after = dict(counts)
    for modality in existing.values():
        after[modality] -= 1
    for item in items:
        after[item.modality] = after.get(item.modality, 0) + 1
    added = sum(1 for item in items if item.id not in existing)
    if added and sum(after.values()) > max_items:
        raise CollectionError(400, f"collection {name!r} would exceed {max_items} items", "collection_full")
    return after, added


class CollectionStore(ABC):
    """One backend. `open` brings the schema up to date (migrations) and loads what it needs."""

    url: str

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def list_collections(self) -> list[CollectionInfo]: ...

    @abstractmethod
    def get(self, name: str) -> CollectionInfo:
        """Raises `CollectionError` 404 when there is no such collection."""

    @abstractmethod
    def create(
        self,
        name: str,
        dim: int,
        model: str,
        *,
        index: IndexKind = "auto",
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        created_at: str | None = None,
    ) -> CollectionInfo: ...

    @abstractmethod
    def delete(self, name: str) -> None: ...

    @abstractmethod
    def upsert(self, name: str, items: Sequence[NewItem]) -> Written:
        """Add or replace (by id) in one transaction; every vector must have the collection's dim."""

    @abstractmethod
    def delete_items(self, name: str, ids: Sequence[str]) -> Written: ...

    @abstractmethod
    def get_item(self, name: str, item_id: str) -> Item | None: ...

    @abstractmethod
    def search(
        self,
        name: str,
        query: np.ndarray,
        top_k: int,
        modality: str | None = None,
        metadata: dict[str, Any] | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        """`query` (dim,) unit vector; `metadata` keeps items whose top-level keys equal these values;
        `exact` skips the ANN index (the ground truth its recall is measured against)."""

    @abstractmethod
    def items(self, name: str, batch: int = 1000) -> Iterator[list[NewItem]]:
        """Every item with its vector, in batches (for copying a collection to another store)."""

    @abstractmethod
    def ann_ready(self, name: str) -> dict[str, bool]:
        """Per modality: does search use an HNSW index now (False while one is being built)?"""

    @abstractmethod
    def wait_indexed(self, timeout: float) -> None:
        """Block until this process's background index builds are done (tests, benchmarks)."""


def check_vectors(items: Sequence[NewItem], dim: int) -> np.ndarray:
    """(n, dim) float32 of the items' vectors, or 400 when one has another size."""
    for item in items:
        if item.modality not in MODALITIES:
            raise CollectionError(400, f"unknown modality {item.modality!r}", "invalid_modality")
        if np.shape(item.vector) != (dim,):
            raise CollectionError(
                400,
                f"item {item.id!r} has a vector of shape {np.shape(item.vector)}, expected ({dim},)",
                "invalid_vector",
            )
    if not items:
        return np.zeros((0, dim), np.float32)
    return np.ascontiguousarray(np.stack([item.vector for item in items]), dtype=np.float32)


def merge_hits(hits: list[Hit], top_k: int) -> list[Hit]:
    hits.sort(key=lambda h: (-h.score, h.id))
    return hits[:top_k]
