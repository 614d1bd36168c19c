"""Reading collections in the format before the database stores, to migrate them.

`<data_dir>/collections/<name>/` held `collection.json` (name, dim, model, created_at, description,
metadata), `snapshot.npz` (items and vectors as of WAL sequence `seq`) and `wal.log` (one
`<crc32 hex> <json>` line per later add/delete; replay stopped at the first torn line). Migration
replays them exactly as the old store did at open, copies every collection into the store (created
with its original metadata and created_at; upserts by id make a re-run after a crash harmless), and
then moves the folder to `<data_dir>/collections.migrated/<name>`, kept until you delete it.
Thumbnails did not exist: migrated items have none.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from service.collections.base import NAME_RE, CollectionError, CollectionStore, NewItem
from service.unicode import replace_lone_surrogates

log = logging.getLogger("momo.service.collections")

META_FILE, SNAPSHOT_FILE, WAL_FILE = "collection.json", "snapshot.npz", "wal.log"
BATCH = 1000


def _unframe(line: bytes) -> dict[str, Any] | None:
    if not line.endswith(b"\n") or len(line) < 10 or line[8:9] != b" ":
        return None
    payload = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        record = replace_lone_surrogates(json.loads(payload))
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def read_legacy(directory: Path) -> tuple[dict[str, Any], dict[str, NewItem]]:
    """(collection.json, items by id) of one old-format collection, WAL replayed over the snapshot.

    The old store accepted lone surrogates in texts and metadata (before the edge refused them) and
    wrote them as JSON escapes; they are read back with U+FFFD in their place, since no database
    (UTF-8 throughout) can hold them."""
    meta = replace_lone_surrogates(json.loads((directory / META_FILE).read_text()))
    dim = int(meta["dim"])
    items: dict[str, NewItem] = {}
    seq = 0
    snapshot = directory / SNAPSHOT_FILE
    if snapshot.is_file():
        with np.load(snapshot, allow_pickle=False) as data:
            state = replace_lone_surrogates(json.loads(bytes(data["state"]).decode("utf-8")))
            vectors = np.asarray(data["vectors"], dtype=np.float32).reshape(-1, dim)
        for entry, vector in zip(state["items"], vectors, strict=True):
            items[entry["id"]] = NewItem(
                entry["id"], entry["modality"], vector, entry.get("metadata") or {}, entry.get("text")
            )
        seq = int(state["seq"])
    wal = directory / WAL_FILE
    if wal.is_file():
        with wal.open("rb") as fh:
            for line in fh:
                record = _unframe(line)
                if record is None:
                    log.warning("%s: a torn last record (a crash mid-append) is ignored", wal)
                    break
                if int(record["seq"]) <= seq:
                    continue  # already in the snapshot
                if record["op"] == "upsert":
                    for entry in record["items"]:
                        vector = np.frombuffer(base64.b64decode(entry["vector"]), dtype="<f4").astype(
                            np.float32
                        )
                        items.pop(entry["id"], None)  # re-inserted last, as the old index ordered it
                        items[entry["id"]] = NewItem(
                            entry["id"],
                            entry["modality"],
                            vector,
                            entry.get("metadata") or {},
                            entry.get("text"),
                        )
                elif record["op"] == "delete":
                    for item_id in record["ids"]:
                        items.pop(item_id, None)
                seq = int(record["seq"])
    return meta, items


def legacy_collections(root: Path) -> Iterator[Path]:
    if root.is_dir():
        for path in sorted(root.iterdir()):
            if path.is_dir() and NAME_RE.match(path.name) and (path / META_FILE).is_file():
                yield path


def migrate_legacy(root: Path, store: CollectionStore) -> list[str]:
    """Copy every old-format collection under `root` into `store`; returns the names migrated.

    A file lock serialises processes that start at once on one data_dir."""
    found = list(legacy_collections(root))
    if not found:
        return []
    done_root = root.with_name(root.name + ".migrated")
    done_root.mkdir(exist_ok=True)
    migrated = []
    with (root / ".migrate.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for directory in legacy_collections(root):  # again, under the lock: another may have finished
            meta, items = read_legacy(directory)
            name = str(meta["name"])
            try:
                store.create(
                    name,
                    int(meta["dim"]),
                    str(meta["model"]),
                    description=meta.get("description"),
                    metadata=meta.get("metadata") or {},
                    created_at=meta.get("created_at"),
                )
            except CollectionError as exc:
                if exc.code != "collection_exists":
                    raise
                info = store.get(name)  # a migration interrupted earlier: finish it
                if (info.dim, info.model) != (int(meta["dim"]), str(meta["model"])):
                    log.error("not migrating %s: the store has another collection %r", directory, name)
                    continue
            values = list(items.values())
            for start in range(0, len(values), BATCH):
                store.upsert(name, values[start : start + BATCH])
            held = store.get(name).count
            if held != len(values):
                raise RuntimeError(f"migrating {directory}: the store holds {held} items, not {len(values)}")
            os.replace(directory, done_root / directory.name)
            log.info(
                "migrated collection %s (%d items) from %s into %s", name, len(values), directory, store.url
            )
            migrated.append(name)
    return migrated
