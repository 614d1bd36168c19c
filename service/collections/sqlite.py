"""The embedded collection store: one SQLite database in WAL mode, FAISS indexes in process.

The database holds everything (items, metadata, vectors as float32 BLOBs); an acknowledged write is
one committed `BEGIN IMMEDIATE` transaction (with `collections_fsync`, `synchronous=FULL`: the WAL
is fsynced at every commit). Metadata filters read `collection_item_fields` through its primary
key, never a Python scan of every item.

Several processes on one file (the workers of one machine): SQLite's lock serialises the writers;
readers never wait for them (WAL). Each process keeps its FAISS indexes in step with the others'
writes through the change sequence (`sqlite_sync.py`): a write acknowledged by any process is found
by the next search of every other one.

The file must be on a local disk: SQLite's locking (and its WAL's shared memory) do not work on
network filesystems (NFS, SMB, most FUSE mounts), where two processes would corrupt it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from momo.artifact import utc_now
from service.collections.base import (
    MODALITIES,
    CollectionError,
    CollectionInfo,
    CollectionStore,
    Hit,
    IndexKind,
    Item,
    NewItem,
    SearchTuning,
    Written,
    canonical_json,
    check_name,
    check_vectors,
    count_changes,
    info_from_row,
    merge_hits,
    not_found,
)
from service.collections.schema import migrate_sqlite
from service.collections.sqlite_sync import InProcessIndexes, Loaded, vectors_from_blobs

log = logging.getLogger("momo.service.collections")

REMOVALS_KEPT = 10_000  # writes of removal history kept for processes that lag behind
PRUNE_EVERY = 1_000
COLUMNS = "id, name, dim, model, index_kind, description, metadata, created_at, text_count, image_count"


def _info(row: sqlite3.Row) -> CollectionInfo:
    return info_from_row(row, json.loads(row["metadata"]))


class SQLiteStore(CollectionStore):
    def __init__(self, path: Path, *, fsync: bool, max_items: int, tuning: SearchTuning) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.fsync = fsync
        self.max_items = max_items
        self.tuning = tuning
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()  # guards _connections
        self.indexes = InProcessIndexes(self._transaction, tuning)

    # --- connections and transactions ---------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections are not shared between threads)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        """A write transaction takes SQLite's write lock at once (no upgrade deadlocks); a read
        transaction sees one snapshot."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _row(self, conn: sqlite3.Connection, name: str) -> sqlite3.Row:
        row = conn.execute(
            f"SELECT {COLUMNS}, seq, pruned_seq FROM collections WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise not_found(name)
        return row

    # --- life cycle ----------------------------------------------------------------------------------
    def open(self) -> None:
        migrate_sqlite(self.path)
        collections = self.list_collections()
        for info in collections:  # warm: build every index now, not at the first search
            self._index(info.name)
        log.info("embedded collection store %s: %d collection(s)", self.path, len(collections))

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self.indexes.clear()
        self._local = threading.local()

    def _index(self, name: str, row: sqlite3.Row | None = None) -> Loaded:
        return self.indexes.get(name, row if row is not None else self._row(self._conn(), name))

    # --- collections ---------------------------------------------------------------------------------
    def list_collections(self) -> list[CollectionInfo]:
        rows = self._conn().execute(f"SELECT {COLUMNS} FROM collections ORDER BY name").fetchall()
        return [_info(r) for r in rows]

    def get(self, name: str) -> CollectionInfo:
        return _info(self._row(self._conn(), name))

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
    ) -> CollectionInfo:
        check_name(name)
        try:
            with self._transaction(write=True) as conn:
                conn.execute(
                    "INSERT INTO collections"
                    " (name, dim, model, index_kind, description, metadata, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        dim,
                        model,
                        index,
                        description,
                        json.dumps(metadata or {}),
                        created_at or utc_now(),
                    ),
                )
        except sqlite3.IntegrityError as exc:
            raise CollectionError(409, f"collection {name!r} already exists", "collection_exists") from exc
        self._index(name)  # in process from the start: our own writes then go straight into it
        return self.get(name)

    def delete(self, name: str) -> None:
        with self._transaction(write=True) as conn:
            row = self._row(conn, name)
            conn.execute("DELETE FROM collections WHERE id = ?", (row["id"],))  # cascades to the items
        self.indexes.drop(name)

    # --- items ---------------------------------------------------------------------------------------
    def _existing(
        self, conn: sqlite3.Connection, collection_id: int, ids: Sequence[str]
    ) -> list[sqlite3.Row]:
        marks = ",".join("?" * len(ids))
        return conn.execute(
            "SELECT key, item_id, modality FROM collection_items"
            f" WHERE collection_id = ? AND item_id IN ({marks})",
            (collection_id, *ids),
        ).fetchall()

    def _remove(self, conn: sqlite3.Connection, collection_id: int, seq: int, keys: list[int]) -> None:
        if keys:
            marks = ",".join("?" * len(keys))
            conn.execute(f"DELETE FROM collection_items WHERE key IN ({marks})", keys)  # fields cascade
            conn.executemany(
                "INSERT INTO collection_removals (collection_id, seq, key) VALUES (?, ?, ?)",
                [(collection_id, seq, key) for key in keys],
            )

    def _finish(self, conn: sqlite3.Connection, row: sqlite3.Row, seq: int, counts: dict[str, int]) -> None:
        conn.execute(
            "UPDATE collections SET seq = ?, text_count = ?, image_count = ? WHERE id = ?",
            (seq, counts["text"], counts["image"], row["id"]),
        )
        if seq % PRUNE_EVERY == 0 and seq > REMOVALS_KEPT:
            horizon = seq - REMOVALS_KEPT
            conn.execute(
                "DELETE FROM collection_removals WHERE collection_id = ? AND seq <= ?", (row["id"], horizon)
            )
            conn.execute("UPDATE collections SET pruned_seq = ? WHERE id = ?", (horizon, row["id"]))

    def upsert(self, name: str, items: Sequence[NewItem]) -> Written:
        with self._transaction(write=True) as conn:
            row = self._row(conn, name)
            vectors = check_vectors(items, row["dim"])
            existing = self._existing(conn, row["id"], [it.id for it in items])
            counts = {"text": row["text_count"], "image": row["image_count"]}
            counts, added = count_changes(
                items, {r["item_id"]: r["modality"] for r in existing}, counts, self.max_items, name
            )
            before, seq = row["seq"], row["seq"] + 1
            removed = [r["key"] for r in existing]
            self._remove(conn, row["id"], seq, removed)
            # keys chosen here, under the write lock: AUTOINCREMENT's next values, never reused
            last = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'collection_items'").fetchone()
            keys = np.arange(len(items), dtype=np.int64) + (last[0] if last else 0) + 1
            conn.executemany(
                "INSERT INTO collection_items"
                " (key, collection_id, item_id, modality, text, metadata, thumbnail, seq, vector)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        int(keys[i]),
                        row["id"],
                        item.id,
                        item.modality,
                        item.text,
                        json.dumps(item.metadata),
                        item.thumbnail,
                        seq,
                        vectors[i].astype("<f4").tobytes(),
                    )
                    for i, item in enumerate(items)
                ],
            )
            fields = [
                (row["id"], k, canonical_json(v), int(keys[i]))
                for i, item in enumerate(items)
                for k, v in item.metadata.items()
            ]
            conn.executemany(
                "INSERT INTO collection_item_fields (collection_id, field, value, key) VALUES (?, ?, ?, ?)",
                fields,
            )
            self._finish(conn, row, seq, counts)
        by_modality = {}
        for modality in MODALITIES:
            mask = np.asarray([it.modality == modality for it in items], bool)
            if mask.any():
                by_modality[modality] = (keys[mask], vectors[mask])
        self.indexes.apply_own(name, before, seq, removed, by_modality)
        return Written(added=added, updated=len(items) - added, count=sum(counts.values()))

    def delete_items(self, name: str, ids: Sequence[str]) -> Written:
        unique = list(dict.fromkeys(ids))
        with self._transaction(write=True) as conn:
            row = self._row(conn, name)
            existing = {r["item_id"]: r for r in self._existing(conn, row["id"], unique)} if unique else {}
            counts = {"text": row["text_count"], "image": row["image_count"]}
            if not existing:
                return Written(missing=unique, count=sum(counts.values()))
            for r in existing.values():
                counts[r["modality"]] -= 1
            before, seq = row["seq"], row["seq"] + 1
            removed = [r["key"] for r in existing.values()]
            self._remove(conn, row["id"], seq, removed)
            self._finish(conn, row, seq, counts)
        self.indexes.apply_own(name, before, seq, removed, {})
        return Written(
            deleted=[i for i in unique if i in existing],
            missing=[i for i in unique if i not in existing],
            count=sum(counts.values()),
        )

    def get_item(self, name: str, item_id: str) -> Item | None:
        conn = self._conn()
        row = self._row(conn, name)
        found = conn.execute(
            "SELECT item_id, modality, metadata, text, thumbnail FROM collection_items"
            " WHERE collection_id = ? AND item_id = ?",
            (row["id"], item_id),
        ).fetchone()
        if found is None:
            return None
        return Item(
            found["item_id"],
            found["modality"],
            json.loads(found["metadata"]),
            found["text"],
            found["thumbnail"],
        )

    def _filtered(self, conn: sqlite3.Connection, collection_id: int, metadata: dict[str, Any]) -> set[int]:
        """Keys whose metadata has every (key, value) of `metadata`: an intersection of index lookups."""
        one = "SELECT key FROM collection_item_fields WHERE collection_id = ? AND field = ? AND value = ?"
        params: list[Any] = []
        for k, v in metadata.items():
            params += [collection_id, k, canonical_json(v)]
        cursor = conn.cursor()
        cursor.row_factory = None  # plain tuples: this can be many rows
        cursor.execute(" INTERSECT ".join([one] * len(metadata)), params)
        return {key for (key,) in cursor.fetchall()}

    def search(
        self,
        name: str,
        query: np.ndarray,
        top_k: int,
        modality: str | None = None,
        metadata: dict[str, Any] | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        conn = self._conn()
        row = self._row(conn, name)
        check_vectors([NewItem("query", "text", query)], row["dim"])
        loaded = self._index(name, row)
        allowed = self._filtered(conn, row["id"], metadata) if metadata else None
        scored: list[tuple[int, float]] = []
        for mod in (modality,) if modality else MODALITIES:
            scored += loaded.indexes[mod].search(query, top_k, allowed, exact=exact)
        if not scored:
            return []
        scores = dict(scored)
        marks = ",".join("?" * len(scores))
        rows = conn.execute(
            "SELECT key, item_id, modality, metadata, text, thumbnail FROM collection_items"
            f" WHERE key IN ({marks})",
            list(scores),
        ).fetchall()
        hits = [
            Hit(
                r["item_id"],
                scores[r["key"]],
                r["modality"],
                json.loads(r["metadata"]),
                r["text"],
                r["thumbnail"],
            )
            for r in rows  # a key removed since the index was read is simply not found
        ]
        return merge_hits(hits, top_k)

    def items(self, name: str, batch: int = 1000) -> Iterator[list[NewItem]]:
        conn = self._conn()
        row = self._row(conn, name)
        last = -1
        while True:
            rows = conn.execute(
                "SELECT key, item_id, modality, metadata, text, thumbnail, vector FROM collection_items"
                " WHERE collection_id = ? AND key > ? ORDER BY key LIMIT ?",
                (row["id"], last, batch),
            ).fetchall()
            if not rows:
                return
            vectors = vectors_from_blobs([r["vector"] for r in rows], row["dim"])
            yield [
                NewItem(
                    r["item_id"],
                    r["modality"],
                    vectors[i],
                    json.loads(r["metadata"]),
                    r["text"],
                    r["thumbnail"],
                )
                for i, r in enumerate(rows)
            ]
            last = rows[-1]["key"]

    def ann_ready(self, name: str) -> dict[str, bool]:
        indexes = self._index(name).indexes
        return {
            m: index.ann_ready and self.tuning.use_ann(index.kind, index.size) for m, index in indexes.items()
        }

    def wait_indexed(self, timeout: float) -> None:
        for collection in self.indexes.all():
            for index in collection.indexes.values():
                index.wait_built(timeout)
