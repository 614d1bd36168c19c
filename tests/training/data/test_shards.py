"""WebDataset shards (training.data.shards) and `momo data shard` (training.data.sharding)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from training.data.commands import register
from training.data.formats import DataFormatError, write_jsonl
from training.data.shards import (
    ShardReader,
    ShardSet,
    WebDatasetRecord,
    expand_shards,
    iter_webdataset,
    write_webdataset,
)
from training.data.sharding import bundled_sources, shard_location


def _png_bytes(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def test_webdataset_round_trip(tmp_path: Path) -> None:
    records = [
        WebDatasetRecord(
            key=f"{i:06d}",
            image=_png_bytes((i * 20, 0, 0)) if i != 5 else None,  # a text-only sample
            image_ext="png",
            text=f"caption {i}" if i % 2 == 0 else None,
            label=i % 3 if i % 3 else None,
            meta={"i": i, "claims": ["a red square"]} if i == 4 else None,
        )
        for i in range(7)
    ]
    shards = write_webdataset(records, tmp_path / "shards", shard_size=3, index={"format": "test"})
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert list(iter_webdataset(shards)) == records
    # glob, brace patterns and the folder (its index.json) find the same shards
    assert list(iter_webdataset(str(tmp_path / "shards" / "*.tar"))) == records
    assert expand_shards(str(tmp_path / "shards" / "shard-{000000..000002}.tar")) == shards
    assert expand_shards(tmp_path / "shards") == shards
    shard_set = ShardSet.open([tmp_path / "shards"])
    assert (shard_set.counts, shard_set.format) == ([3, 3, 1], "test")
    # random access by global index, through wids
    reader = ShardReader(shard_set, cache_shards=1)
    shard, key, members = reader[4]
    assert (shard.name, key, members["txt"]) == ("shard-000001.tar", "000004", b"caption 4")
    assert reader.locate(6) == (2, 0)
    # deterministic bytes: writing again gives identical shards
    again = write_webdataset(records, tmp_path / "again", shard_size=3)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in shards]
    decoded = Image.open(io.BytesIO(next(iter_webdataset(shards[:1])).image or b""))
    assert decoded.size == (4, 4)


def test_webdataset_reads_foreign_shard_and_rejects_bad_samples(tmp_path: Path) -> None:
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in [
            ("dir/000001.jpg", b"JPEGDATA"),
            ("dir/000001.cls", b" 7\n"),
            ("dir/000001.txt", b"hello"),
            ("dir/000002.png", b"PNG"),
            ("dir/000002.jpg", b"JPEG"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    samples = iter_webdataset(shard)
    first = next(samples)
    assert (first.key, first.image, first.image_ext, first.label, first.text) == (
        "000001",
        b"JPEGDATA",
        "jpg",
        7,
        "hello",
    )
    with pytest.raises(DataFormatError, match=r"s\.tar: sample 'dir/000002': several image members"):
        next(samples)
    assert ShardSet.open([shard]).counts == [2]  # no index: counted by opening the shard
    assert ShardSet.open([tmp_path]).shards == [shard]  # a folder without index.json: its *.tar
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(DataFormatError, match="not a readable tar file"):
        list(iter_webdataset(broken))
    with pytest.raises(DataFormatError, match=r"broken\.tar: not a readable tar file"):
        ShardSet.open([broken])


def test_webdataset_writer_validates_keys(tmp_path: Path) -> None:
    img = _png_bytes((0, 0, 0))
    with pytest.raises(ValueError, match="invalid WebDataset key"):
        write_webdataset([WebDatasetRecord("a.b", img)], tmp_path)
    with pytest.raises(ValueError, match="duplicate"):
        write_webdataset([WebDatasetRecord("a", img), WebDatasetRecord("a", img)], tmp_path)


def _cli(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["data", "shard", *args])
    return result.exit_code, result.output


def test_shard_command_writes_an_image_folder_and_pairs_of_a_user(tmp_path: Path) -> None:
    for i, label in enumerate(["cat", "cat", "dog"]):
        path = tmp_path / "folder" / label / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png_bytes((i, 0, 0)))
    code, output = _cli(str(tmp_path / "folder"), "--out", str(tmp_path / "folder-shards"), "--shard-size", "2")
    assert code == 0, output
    assert "3 samples in 2 shards (image_folder)" in output
    shard_set = ShardSet.open([tmp_path / "folder-shards"])
    assert shard_set.labels == ["cat", "dog"]
    records = list(iter_webdataset(shard_set.shards))
    assert [r.meta for r in records] == [{"label": "cat"}, {"label": "cat"}, {"label": "dog"}]
    assert records[2].image == (tmp_path / "folder/dog/2.png").read_bytes()  # copied, not re-encoded

    write_jsonl(tmp_path / "pairs.jsonl", [{"image": "folder/cat/0.png", "text": "a cat"}] * 5)
    code, output = _cli(str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "pair-shards"))
    assert code == 0 and "5 samples in 1 shards (pairs)" in output
    assert [r.text for r in iter_webdataset(tmp_path / "pair-shards")] == ["a cat"] * 5
    marker = (tmp_path / "pair-shards" / "shard-000000.tar").stat().st_mtime_ns
    assert _cli(str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "pair-shards"))[0] == 0
    assert (tmp_path / "pair-shards" / "shard-000000.tar").stat().st_mtime_ns == marker  # done: kept

    assert _cli("--bundled", str(tmp_path / "pairs.jsonl"))[0] == 2
    code, output = _cli(str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x"))
    assert code == 1 and "missing.jsonl" in output


def test_bundled_sources_all_get_shards(micro_data: Path, micro_shards: Path) -> None:
    sources = bundled_sources(micro_data)
    relative = {str(p.relative_to(micro_data)) for p in sources}
    assert {"fashion_mnist/train/images", "shapes/train/pairs.jsonl", "shapes/train/vqa.jsonl"} <= relative
    assert {"wordnet/train.jsonl", "text/train.txt", "emoji/val/pairs.jsonl"} <= relative
    for path in relative:
        index = json.loads((micro_shards / shard_location(path) / "index.json").read_text())
        assert index["source"] == str(micro_data / path) and index["shard_size"] == 60
        assert sum(s["nsamples"] for s in index["shardlist"]) > 0
    vqa = ShardSet.open([micro_shards / shard_location("shapes/train/vqa.jsonl")])
    assert vqa.format == "vqa" and vqa.labels and "yes" in vqa.labels
