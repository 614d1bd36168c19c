"""Shard streams decode what the in-memory streams decode, pass optional fields through, and skip
(and count) or name a corrupt sample."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from momo.config import get_preset
from momo.tokenizer import MoMoTokenizer
from training.data.formats import DataFormatError
from training.data.sharding import shard_location
from training.data.shards import ShardSet, WebDatasetRecord, write_webdataset
from training.shard_streams import ShardStream
from training.stream_loader import StreamLoader
from training.streams import Collate, build_stream_data, make_batch

CONFIG = get_preset("momo-test")


@pytest.fixture(scope="module")
def tokenizer(micro_data: Path) -> MoMoTokenizer:
    return MoMoTokenizer.load(micro_data / "tokenizer.json")


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("pair", "shapes/train/pairs.jsonl"),
        ("image_class", "fashion_mnist/train/images"),
        ("vqa", "shapes/train/vqa.jsonl"),
        ("text_class", "wordnet/train.jsonl"),
        ("text", "text/train.txt"),
        ("text_pair", "gcide/train.jsonl"),
        ("pair", "clipart/train/pairs.jsonl"),
    ],
)
def test_shards_decode_exactly_what_memory_decodes(
    micro_shards: Path, tokenizer, kind: str, path: str
) -> None:
    memory = build_stream_data(kind, [micro_shards / path], CONFIG, tokenizer)
    shards = ShardStream(kind, ShardSet.open([micro_shards / shard_location(path)]), CONFIG, tokenizer)
    assert len(shards) == len(memory) and shards.label_names == memory.label_names
    indices = np.asarray([0, 3, len(memory) - 1])
    a = make_batch(memory, indices, CONFIG)
    b = Collate(kind, CONFIG, tokenizer.pad_id)([shards[int(i)] for i in indices])
    for field in ("pixels", "input_ids", "attention_mask", "labels"):
        left, right = getattr(a, field), getattr(b, field)
        assert (left is None) == (right is None), field
        if left is not None:
            assert left.equal(right), field
    # what ITM's negatives and TTC's pairing read travels too
    for key in ("category", "objects", "claim", "pair_size"):
        assert a.meta.get(key) == b.meta.get(key), key


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (value, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def corrupt_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 pairs in 4 shards; sample 25 has bytes that are no image. Sample json carries claims."""
    out = tmp_path_factory.mktemp("corrupt") / "shards"
    records = [
        WebDatasetRecord(
            f"{i:06d}",
            image=b"\x89PNG not really" if i == 25 else _png(i),
            text=f"caption {i}",
            meta={"id": i, "claims": [f"claim {i}"]},
        )
        for i in range(40)
    ]
    write_webdataset(records, out, 10)
    return out


def _epoch(shards: Path, tokenizer: MoMoTokenizer, on_error: str) -> tuple[list[int], StreamLoader]:
    source = ShardStream("pair", ShardSet.open([shards]), CONFIG, tokenizer, on_error=on_error)  # type: ignore[arg-type]
    loader = StreamLoader("pairs", source, Collate("pair", CONFIG, tokenizer.pad_id), 8, seed=0, workers=1)
    ids: list[int] = []
    for _ in range(5):
        for _, batch in loader.next_step():
            ids += batch.meta["id"]
            assert batch.meta["claims"] == [[f"claim {i}"] for i in batch.meta["id"]]  # passed through
    loader.close()
    return ids, loader


def test_corrupt_sample_is_skipped_and_counted(corrupt_shards: Path, tokenizer) -> None:
    ids, loader = _epoch(corrupt_shards, tokenizer, "skip")
    assert sorted(ids) == [i for i in range(40) if i != 25]
    assert loader.skipped == 1 and loader.state_dict()["skipped"] == 1


def test_corrupt_sample_fails_naming_shard_and_key(corrupt_shards: Path, tokenizer) -> None:
    with pytest.raises(DataFormatError, match=r"shard-000002\.tar: sample '000025': .*image"):
        _epoch(corrupt_shards, tokenizer, "raise")


def test_shard_count_mismatch_names_the_shard(tmp_path: Path, tokenizer) -> None:
    write_webdataset([WebDatasetRecord(f"{i}", text=f"t {i}") for i in range(6)], tmp_path, 3)
    index = (tmp_path / "index.json").read_text().replace('"nsamples": 3', '"nsamples": 4', 1)
    (tmp_path / "index.json").write_text(index)
    source = ShardStream("text", ShardSet.open([tmp_path]), CONFIG, tokenizer)
    with pytest.raises(DataFormatError, match=r"shard-000000\.tar: holds 3 samples, its index says 4"):
        source[0]
