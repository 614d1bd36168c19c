"""Collections in the old on-disk format (snapshot.npz + a CRC-framed wal.log) are migrated into
either store on first start, or by `momo collections migrate`, with nothing lost."""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from typer.testing import CliRunner

from service.collections import create_store
from tests.service.helpers import LiveServer, make_settings

DIM = 16


def _unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _frame(record: dict[str, Any]) -> bytes:
    payload = json.dumps(record, separators=(",", ":")).encode()
    return b"%08x " % zlib.crc32(payload) + payload + b"\n"


def _entry(item_id: str, seed: int, **extra: Any) -> dict[str, Any]:
    return {"id": item_id, "modality": "text", "metadata": {"seed": seed}, "text": f"text {seed}", **extra}


def write_legacy(root: Path, name: str = "old") -> dict[str, np.ndarray]:
    """A collection as the old store left it: a snapshot at seq 2, a WAL with records 2 (already in
    the snapshot), 3 and 4, and a torn record from a crash mid-append. Returns the surviving vectors."""
    directory = root / name
    directory.mkdir(parents=True)
    meta = {
        "name": name,
        "dim": DIM,
        "model": "momo-test:v1",
        "created_at": "2024-05-01T10:00:00+00:00",
        "description": "from before",
        "metadata": {"team": "search"},
        "format": 1,
    }
    (directory / "collection.json").write_text(json.dumps(meta))
    snapshot_ids = ["a", "b", "c", "d"]
    state = {"seq": 2, "items": [_entry(i, n) for n, i in enumerate(snapshot_ids)]}
    with (directory / "snapshot.npz").open("wb") as fh:
        np.savez(
            fh,
            state=np.frombuffer(json.dumps(state).encode(), dtype=np.uint8),
            vectors=np.stack([_unit(n) for n in range(4)]),
        )

    def upsert(seq: int, item_id: str, seed: int, **extra: Any) -> bytes:
        vector = base64.b64encode(_unit(seed).astype("<f4").tobytes()).decode()
        return _frame({"op": "upsert", "seq": seq, "items": [_entry(item_id, seed, vector=vector, **extra)]})

    with (directory / "wal.log").open("wb") as fh:
        fh.write(upsert(2, "stale", 90))  # at or below the snapshot's seq: already folded in
        fh.write(upsert(3, "e", 4))
        fh.write(upsert(4, "a", 5, metadata={"replaced": True}))
        fh.write(_frame({"op": "delete", "seq": 5, "ids": ["b"]}))
        fh.write(b'0badc0de {"op":"upsert","seq":6,"items":[{"id":"torn"')
    return {"a": _unit(5), "c": _unit(2), "d": _unit(3), "e": _unit(4)}


def test_old_collections_are_migrated_on_first_start(
    model_store: Path, tmp_path: Path, collections_url: str
) -> None:
    data_dir = tmp_path / "data"
    expected = write_legacy(data_dir / "collections")
    settings = make_settings(model_store, data_dir, collections_url=collections_url)
    for _start in range(2):  # the second start finds nothing left to migrate
        with LiveServer(settings) as live, live.client() as c:
            info = c.get("/v1/collections/old").json()
            assert info["count"] == 4 and info["counts"] == {"text": 4, "image": 0}
            assert (info["model"], info["created_at"]) == ("momo-test:v1", "2024-05-01T10:00:00+00:00")
            assert (info["description"], info["metadata"]) == ("from before", {"team": "search"})
            a = c.get("/v1/collections/old/items/a").json()
            assert a["metadata"] == {"replaced": True} and a["thumbnail"] is None
            for gone in ("b", "stale", "torn"):
                assert c.get(f"/v1/collections/old/items/{gone}").status_code == 404
            store = live.services.collections
            for item_id, vector in expected.items():  # the very vectors, searchable
                hit = store.search("old", vector, 1)[0]
                assert hit.id == item_id and abs(hit.score - 1.0) < 1e-5
    assert not (data_dir / "collections" / "old").exists()
    assert (data_dir / "collections.migrated" / "old" / "wal.log").is_file()  # kept until you delete it


def test_momo_collections_migrate(tmp_path: Path) -> None:
    from momo import cli

    data_dir = tmp_path / "data"
    expected = write_legacy(data_dir / "collections", name="cli")
    cli._register_providers(["collections"])
    result = CliRunner().invoke(cli.app, ["collections", "migrate", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "migrated 1 collection(s) ['cli']" in result.output
    store = create_store(f"sqlite:///{data_dir / 'collections.db'}")
    store.open()
    try:
        assert store.get("cli").count == len(expected)
        assert {i.id for batch in store.items("cli") for i in batch} == set(expected)
    finally:
        store.close()
    again = CliRunner().invoke(cli.app, ["collections", "migrate", "--data-dir", str(data_dir)])
    assert again.exit_code == 0 and "migrated 0 collection(s)" in again.output


def test_momo_collections_copy_moves_an_embedded_store_to_postgresql(
    tmp_path: Path, pgvector_url: str
) -> None:
    from momo import cli

    data_dir = tmp_path / "data"
    expected = write_legacy(data_dir / "collections", name="moving")
    source = f"sqlite:///{data_dir / 'collections.db'}"
    cli._register_providers(["collections"])
    runner = CliRunner()
    assert runner.invoke(cli.app, ["collections", "migrate", "--data-dir", str(data_dir)]).exit_code == 0
    result = runner.invoke(cli.app, ["collections", "copy", "--from", source, "--to", pgvector_url])
    assert result.exit_code == 0, result.output
    target = create_store(pgvector_url)
    target.open()
    try:
        info = target.get("moving")
        assert info.count == 4 and info.created_at == "2024-05-01T10:00:00+00:00"
        for item_id, vector in expected.items():
            assert target.search("moving", vector, 1)[0].id == item_id
    finally:
        target.close()
