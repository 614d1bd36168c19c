"""Retrieval collections: one interface (`base.CollectionStore`), two backends, chosen by URL.

- `sqlite:///<path>` (default `<data_dir>/collections.db`): the embedded store (`sqlite.py`), no
  server; FAISS indexes in process (`index.py`); several processes of one machine share it.
- `postgresql://…`: PostgreSQL + pgvector (`pgvector.py`), for any number of API replicas.

Both get their schema from the Alembic migrations (`schema.py`, `migrations/`). Collections in
the format before these stores (snapshot.npz + wal.log under `<data_dir>/collections/`) are
migrated at open (`legacy.py`), or by `momo collections migrate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from service.collections.base import (
    CollectionError,
    CollectionInfo,
    CollectionStore,
    Hit,
    Item,
    NewItem,
    SearchTuning,
    Written,
)
from service.collections.legacy import migrate_legacy

if TYPE_CHECKING:
    from service.settings import Settings

__all__ = [
    "CollectionError",
    "CollectionInfo",
    "CollectionStore",
    "Hit",
    "Item",
    "NewItem",
    "SearchTuning",
    "Written",
    "collections_url",
    "create_store",
    "open_store",
    "store_from_settings",
]


def collections_url(url: str | None, data_dir: Path) -> str:
    return url or f"sqlite:///{data_dir / 'collections.db'}"


def create_store(
    url: str,
    *,
    fsync: bool = True,
    max_items: int = 1_000_000,
    tuning: SearchTuning | None = None,
    maintenance_work_mem: str = "1GB",
) -> CollectionStore:
    """The backend for `url` (not opened yet)."""
    tuning = tuning or SearchTuning()
    if url.startswith("sqlite:///"):
        from service.collections.sqlite import SQLiteStore

        return SQLiteStore(
            Path(url.removeprefix("sqlite:///")), fsync=fsync, max_items=max_items, tuning=tuning
        )
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        from service.collections.pgvector import PgvectorStore

        return PgvectorStore(
            url, max_items=max_items, tuning=tuning, maintenance_work_mem=maintenance_work_mem
        )
    raise ValueError(
        f"collections_url must be sqlite:///<path> or postgresql://…, not {url.split(':', 1)[0]!r}"
    )


def open_store(store: CollectionStore, legacy_root: Path) -> list[str]:
    """Open `store` (schema migrations) and migrate old-format collections under `legacy_root`."""
    store.open()
    return migrate_legacy(legacy_root, store)


def store_from_settings(settings: Settings) -> CollectionStore:
    return create_store(
        collections_url(settings.collections_url, settings.data_dir),
        fsync=settings.collections_fsync,
        max_items=settings.max_collection_items,
        tuning=SearchTuning(
            threshold=settings.ann_threshold,
            ef_search=settings.ann_ef_search,
            rescore=settings.ann_rescore,
            m=settings.ann_m,
            ef_construction=settings.ann_ef_construction,
        ),
        maintenance_work_mem=settings.ann_build_memory,
    )
