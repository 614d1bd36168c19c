"""Retrieval collections: FAISS inner-product indexes + item metadata, persisted crash-safely.

On disk, `<data_dir>/collections/<name>/`:
- `collection.json` — name, dim, the model version the vectors came from, created_at, … (written
  once, through temp file + fsync + rename);
- `snapshot.npz`    — every item and vector as of WAL sequence number `seq` (temp + fsync + rename);
- `wal.log`         — a write-ahead log of later changes, one line per add/delete request:
  `<crc32 hex> <json>\\n`, appended and fsynced *before* the change is applied in memory and
  acknowledged. Replay on open stops at the first torn or corrupt line (a crash mid-append) and
  cuts it off. When the log grows past `snapshot_every` records it is folded into a new snapshot
  and truncated; records at or below the snapshot's `seq` are skipped on replay, so a crash
  between the two steps loses nothing.

Embeddings are unit norm, so inner product = cosine similarity. One flat index per item modality
(text, image): an exact search, and a modality filter costs nothing. A readers–writer lock per
collection lets searches run together while adds and deletes are exclusive.

Model swaps: a collection remembers the model version (`name:version`) of its vectors. When the
served model is another version, adding to or searching the collection is refused with 409
`collection_model_mismatch` (vectors of two models are not comparable); listing, reading and
deleting still work. Re-activate the recorded version, or delete and re-create the collection.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import threading
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from momo.artifact import utc_now, write_json_atomic

log = logging.getLogger("momo.service.retrieval")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
META_FILE = "collection.json"
SNAPSHOT_FILE = "snapshot.npz"
WAL_FILE = "wal.log"
MODALITIES = ("text", "image")


class CollectionError(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass
class Item:
    id: str
    modality: str
    metadata: dict[str, Any]
    text: str | None
    key: int  # the int64 id inside the FAISS index


@dataclass
class NewItem:
    id: str
    modality: str
    vector: np.ndarray  # (dim,) float32, unit norm
    metadata: dict[str, Any] = field(default_factory=dict)
    text: str | None = None


@dataclass
class Hit:
    id: str
    score: float
    modality: str
    metadata: dict[str, Any]
    text: str | None


def _encode_vector(vector: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def _decode_vector(text: str, dim: int) -> np.ndarray:
    vector = np.frombuffer(base64.b64decode(text), dtype="<f4")
    if vector.shape != (dim,):
        raise ValueError(f"vector has {vector.size} values, expected {dim}")
    return vector.astype(np.float32)


def _frame(record: dict[str, Any]) -> bytes:
    payload = json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    return b"%08x " % zlib.crc32(payload) + payload + b"\n"


def _unframe(line: bytes) -> dict[str, Any] | None:
    if not line.endswith(b"\n") or len(line) < 10 or line[8:9] != b" ":
        return None
    payload = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        record = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


class Collection:
    def __init__(
        self, directory: Path, meta: dict[str, Any], *, fsync: bool, snapshot_every: int, max_items: int
    ) -> None:
        self.directory = directory
        self.meta = meta
        self.name = str(meta["name"])
        self.dim = int(meta["dim"])
        self.model = str(meta["model"])
        self.fsync = fsync
        self.snapshot_every = snapshot_every
        self.max_items = max_items
        self.lock = RWLock()
        self._items: dict[str, Item] = {}
        self._by_key: dict[int, str] = {}
        self._next_key = 0
        self._seq = 0
        self._wal_records = 0
        self._indexes = {m: faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim)) for m in MODALITIES}
        self._wal: Any = None
        self.deleted = False

    # --- info ---------------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return len(self._items)

    def counts(self) -> dict[str, int]:
        return {m: int(self._indexes[m].ntotal) for m in MODALITIES}

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dim": self.dim,
            "model": self.model,
            "count": self.count,
            "counts": self.counts(),
            "created_at": self.meta.get("created_at"),
            "description": self.meta.get("description"),
            "metadata": self.meta.get("metadata") or {},
        }

    # --- in-memory application (no I/O) ------------------------------------------------------------------
    def _remove(self, item_id: str) -> bool:
        item = self._items.pop(item_id, None)
        if item is None:
            return False
        self._indexes[item.modality].remove_ids(np.asarray([item.key], dtype=np.int64))  # type: ignore[arg-type]
        self._by_key.pop(item.key, None)
        return True

    def _apply(self, record: dict[str, Any]) -> None:
        if record["op"] == "upsert":
            for entry in record["items"]:
                self._remove(entry["id"])
                key = self._next_key
                self._next_key += 1
                vector = (
                    _decode_vector(entry["vector"], self.dim)
                    if isinstance(entry["vector"], str)
                    else entry["vector"]
                )
                self._indexes[entry["modality"]].add_with_ids(
                    vector.reshape(1, -1), np.asarray([key], dtype=np.int64)
                )
                self._items[entry["id"]] = Item(
                    entry["id"], entry["modality"], entry.get("metadata") or {}, entry.get("text"), key
                )
                self._by_key[key] = entry["id"]
        elif record["op"] == "delete":
            for item_id in record["ids"]:
                self._remove(item_id)
        else:
            raise ValueError(f"unknown WAL op {record['op']!r}")
        self._seq = int(record["seq"])

    # --- persistence ------------------------------------------------------------------------------------
    def load(self) -> None:
        snapshot = self.directory / SNAPSHOT_FILE
        if snapshot.is_file():
            with np.load(snapshot, allow_pickle=False) as data:
                state = json.loads(bytes(data["state"]).decode("utf-8"))
                vectors = np.asarray(data["vectors"], dtype=np.float32).reshape(-1, self.dim)
            entries = state["items"]
            if len(entries) != len(vectors):
                raise ValueError(f"{snapshot}: {len(entries)} items but {len(vectors)} vectors")
            for entry, vector in zip(entries, vectors, strict=True):
                entry["vector"] = vector
            self._apply({"op": "upsert", "seq": int(state["seq"]), "items": entries})
        wal = self.directory / WAL_FILE
        good_bytes = 0
        if wal.is_file():
            with wal.open("rb") as fh:
                for line in fh:
                    record = _unframe(line)
                    if record is None:
                        log.warning(
                            "%s: ignoring a torn/corrupt record at byte %d (and after)", wal, good_bytes
                        )
                        break
                    good_bytes += len(line)
                    if int(record["seq"]) > self._seq:
                        self._apply(record)
                    self._wal_records += 1
            if good_bytes != wal.stat().st_size:
                with wal.open("r+b") as fh:
                    fh.truncate(good_bytes)
                    fh.flush()
                    os.fsync(fh.fileno())
        self._wal = wal.open("ab")

    def _append(self, record: dict[str, Any]) -> None:
        if self._wal is None or self.deleted:
            raise CollectionError(404, f"collection {self.name!r} was deleted", "collection_not_found")
        self._wal.write(_frame(record))
        self._wal.flush()
        if self.fsync:
            os.fsync(self._wal.fileno())
        self._wal_records += 1

    def snapshot(self) -> None:
        """Fold the WAL into a new snapshot, then truncate the WAL (caller holds the write lock)."""
        entries, vectors = [], []
        for item in self._items.values():
            entries.append(
                {"id": item.id, "modality": item.modality, "metadata": item.metadata, "text": item.text}
            )
            vectors.append(self._indexes[item.modality].reconstruct(item.key))
        state = json.dumps({"seq": self._seq, "items": entries}).encode("utf-8")
        array = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, self.dim), np.float32)
        tmp = self.directory / f".{SNAPSHOT_FILE}.{uuid.uuid4().hex[:8]}.tmp"
        with tmp.open("wb") as fh:
            np.savez(fh, state=np.frombuffer(state, dtype=np.uint8), vectors=array)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / SNAPSHOT_FILE)
        _fsync_dir(self.directory)
        if self._wal is not None:
            self._wal.close()
        with (self.directory / WAL_FILE).open("wb") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        self._wal = (self.directory / WAL_FILE).open("ab")
        self._wal_records = 0

    def close(self) -> None:
        if self._wal is not None:
            self._wal.close()
            self._wal = None

    # --- operations (thread-safe) ------------------------------------------------------------------
    def upsert(self, items: list[NewItem]) -> tuple[int, int]:
        """Add or replace items (same id -> replaced); returns (added, updated)."""
        with self.lock.write():
            new_ids = {it.id for it in items if it.id not in self._items}
            if self.count + len(new_ids) > self.max_items:
                raise CollectionError(
                    400, f"collection {self.name!r} would exceed {self.max_items} items", "collection_full"
                )
            record = {
                "op": "upsert",
                "seq": self._seq + 1,
                "items": [
                    {
                        "id": it.id,
                        "modality": it.modality,
                        "metadata": it.metadata,
                        "text": it.text,
                        "vector": _encode_vector(it.vector),
                    }
                    for it in items
                ],
            }
            self._append(record)
            self._apply(record)
            if self._wal_records >= self.snapshot_every:
                self.snapshot()
            added = len(new_ids)
            return added, len(items) - added

    def delete(self, ids: list[str]) -> tuple[list[str], list[str]]:
        with self.lock.write():
            present = [i for i in dict.fromkeys(ids) if i in self._items]
            missing = [i for i in dict.fromkeys(ids) if i not in self._items]
            if present:
                record = {"op": "delete", "seq": self._seq + 1, "ids": present}
                self._append(record)
                self._apply(record)
                if self._wal_records >= self.snapshot_every:
                    self.snapshot()
            return present, missing

    def get(self, item_id: str) -> Item | None:
        with self.lock.read():
            return self._items.get(item_id)

    def search(
        self,
        query: np.ndarray,
        top_k: int,
        modality: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> list[Hit]:
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        hits: list[Hit] = []
        with self.lock.read():
            for mod in (modality,) if modality else MODALITIES:
                index = self._indexes[mod]
                total = int(index.ntotal)
                if total == 0:
                    continue
                k = total if metadata else min(top_k, total)
                scores, keys = index.search(query, k)
                for score, key in zip(scores[0], keys[0], strict=True):
                    if key < 0:
                        continue
                    item = self._items[self._by_key[int(key)]]
                    if metadata and any(item.metadata.get(k2) != v for k2, v in metadata.items()):
                        continue
                    hits.append(Hit(item.id, float(score), item.modality, item.metadata, item.text))
        hits.sort(key=lambda h: (-h.score, h.id))
        return hits[:top_k]


class CollectionStore:
    """Every collection under one directory; create/delete are serialised by a store lock."""

    def __init__(
        self, root: Path, *, fsync: bool = True, snapshot_every: int = 2000, max_items: int = 1_000_000
    ) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.snapshot_every = snapshot_every
        self.max_items = max_items
        self._collections: dict[str, Collection] = {}
        self._lock = threading.Lock()
        self.opened = False

    def _make(self, directory: Path, meta: dict[str, Any]) -> Collection:
        return Collection(
            directory, meta, fsync=self.fsync, snapshot_every=self.snapshot_every, max_items=self.max_items
        )

    def open(self) -> None:
        """Load every collection from disk (and sweep leftovers of interrupted creates/deletes)."""
        faiss.omp_set_num_threads(1)  # single-query searches: threads only add contention
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock:
            for path in sorted(self.root.iterdir()):
                if path.name.startswith("."):
                    shutil.rmtree(path, ignore_errors=True)
                    continue
                if not path.is_dir() or not NAME_RE.match(path.name):
                    continue
                try:
                    meta = json.loads((path / META_FILE).read_text())
                    collection = self._make(path, meta)
                    collection.load()
                except Exception:
                    log.exception("cannot load collection %s; skipped", path)
                    continue
                self._collections[collection.name] = collection
            self.opened = True
        log.info("loaded %d collection(s) from %s", len(self._collections), self.root)

    def close(self) -> None:
        with self._lock:
            for collection in self._collections.values():
                with collection.lock.write():
                    if collection._wal_records:
                        try:
                            collection.snapshot()
                        except OSError:
                            log.exception(
                                "snapshot of %s failed (the WAL still has everything)", collection.name
                            )
                    collection.close()
            self._collections.clear()

    def list(self) -> list[Collection]:
        with self._lock:
            return sorted(self._collections.values(), key=lambda c: c.name)

    def get(self, name: str) -> Collection:
        collection = self._collections.get(name)
        if collection is None:
            raise CollectionError(404, f"no collection named {name!r}", "collection_not_found")
        return collection

    def create(
        self,
        name: str,
        dim: int,
        model: str,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Collection:
        if not NAME_RE.match(name):
            raise CollectionError(
                400,
                "collection name must be 1-64 characters of letters, digits, '.', '_' or '-', "
                "starting with a letter or digit",
                "invalid_collection_name",
            )
        with self._lock:
            if name in self._collections:
                raise CollectionError(409, f"collection {name!r} already exists", "collection_exists")
            meta = {
                "name": name,
                "dim": dim,
                "model": model,
                "created_at": utc_now(),
                "description": description,
                "metadata": metadata or {},
                "format": 1,
            }
            tmp = self.root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            try:
                write_json_atomic(tmp / META_FILE, meta)
                _fsync_dir(tmp)
                os.rename(tmp, self.root / name)
                _fsync_dir(self.root)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            collection = self._make(self.root / name, meta)
            collection.load()
            self._collections[name] = collection
            return collection

    def delete(self, name: str) -> None:
        with self._lock:
            collection = self.get(name)
            with collection.lock.write():
                collection.deleted = True
                collection.close()
                graveyard = self.root / f".deleted-{name}-{uuid.uuid4().hex[:8]}"
                os.rename(collection.directory, graveyard)
                _fsync_dir(self.root)
            del self._collections[name]
        shutil.rmtree(graveyard, ignore_errors=True)
