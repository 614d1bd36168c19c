"""The PostgreSQL store's HNSW indexes: one partial expression index per collection and modality.

`CREATE INDEX … USING hnsw ((embedding::vector(dim)) vector_ip_ops) WHERE collection_id = N AND
modality = 'text'`: HNSW needs a fixed dimension, and collections of several models have several.
They are built in a background thread with `CREATE INDEX CONCURRENTLY` (writes go on; exact search
serves until the index is valid), by one replica at a time (an advisory lock per collection); the
others find it valid in the catalog. An index left invalid by an interrupted build is dropped and
built again.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.exc import DBAPIError

from service.collections.base import MODALITIES, SearchTuning

log = logging.getLogger("momo.service.collections")

BUILD_LOCK = 0x6D6F6D6F0000  # + collection id: one replica builds a collection's HNSW indexes


def index_name(collection_id: int, modality: str) -> str:
    return f"ix_collection_items_hnsw_{collection_id}_{modality}"


class HnswIndexes:
    def __init__(self, engine: Engine, tuning: SearchTuning, maintenance_work_mem: str) -> None:
        self.engine = engine
        self.tuning = tuning
        self.maintenance_work_mem = maintenance_work_mem
        self._ready: set[tuple[int, str]] = set()  # indexes known to be valid
        self._building: set[tuple[int, str]] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def ready(self, collection_id: int, modality: str) -> bool:
        if (collection_id, modality) in self._ready:
            return True
        with self.engine.connect() as conn:
            valid = conn.execute(
                text(
                    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                    " WHERE c.relname = :name"
                ),
                {"name": index_name(collection_id, modality)},
            ).scalar()
        if valid:
            self._ready.add((collection_id, modality))
        return bool(valid)

    def ensure(self, row: RowMapping) -> None:
        """Start background builds of the HNSW indexes this collection needs and lacks."""
        for modality in MODALITIES:
            key = (int(row["id"]), modality)
            size = int(row[f"{modality}_count"])
            if size == 0 or not self.tuning.use_ann(row["index_kind"], size) or key in self._ready:
                continue
            with self._lock:
                if key in self._building:
                    continue
                self._building.add(key)
            thread = threading.Thread(
                target=self._build, args=(key, int(row["dim"])), name="pgvector-hnsw", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _build(self, key: tuple[int, str], dim: int) -> None:
        collection_id, modality = key
        name = index_name(collection_id, modality)
        try:
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                if not conn.execute(
                    text("SELECT pg_try_advisory_lock(:k)"), {"k": BUILD_LOCK + collection_id}
                ).scalar():
                    return  # another replica builds it; `_ann_ready` sees it once valid
                try:
                    invalid = conn.execute(
                        text(
                            "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                            " WHERE c.relname = :name"
                        ),
                        {"name": name},
                    ).scalar()
                    if invalid:  # left by a build that was interrupted
                        conn.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))
                    conn.execute(
                        text("SELECT set_config('maintenance_work_mem', :m, false)"),
                        {"m": self.maintenance_work_mem},
                    )
                    m, ef_construction = self.tuning.m, self.tuning.ef_construction
                    conn.execute(
                        text(
                            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON collection_items"
                            f" USING hnsw ((embedding::vector({dim})) vector_ip_ops)"
                            f" WITH (m = {m:d}, ef_construction = {ef_construction:d})"
                            f" WHERE collection_id = {collection_id} AND modality = '{modality}'"
                        )
                    )
                    # fresh statistics, or the planner may keep scanning the btree of a table it
                    # still believes small instead of using the new index
                    conn.execute(text("ANALYZE collection_items"))
                    log.info("HNSW index %s is ready", name)
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": BUILD_LOCK + collection_id})
        except DBAPIError:
            log.exception("building HNSW index %s failed; searches stay exact", name)
        finally:
            with self._lock:
                self._building.discard(key)

    def wait(self, timeout: float) -> None:
        """Join this process's builds (tests, benchmarks)."""
        for thread in list(self._threads):
            thread.join(timeout)

    def drop(self, conn: Connection, collection_id: int) -> None:
        """Inside the transaction that deletes the collection."""
        for modality in MODALITIES:
            conn.execute(text(f"DROP INDEX IF EXISTS {index_name(collection_id, modality)}"))
            self._ready.discard((collection_id, modality))
