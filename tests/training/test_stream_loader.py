"""The stream loader on a few hundred generated samples in shards: each sample once per epoch over
2 ranks × 2 workers, exact resume mid-epoch, the same micro-batches whatever the rank split."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from momo.config import get_preset
from momo.tokenizer import MoMoTokenizer
from training.data.shards import ShardSet, WebDatasetRecord, write_webdataset
from training.shard_streams import ShardStream
from training.stream_loader import EpochOrder, StreamLoader
from training.streams import Collate

N_SAMPLES, SHARD_SIZE, BATCH = 240, 20, 8
CONFIG = get_preset("momo-test")


def png(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 12), (index % 256, (index * 7) % 256, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pair_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 image–text pairs in 12 shards; each sample's json carries its id (an optional field)."""
    out = tmp_path_factory.mktemp("pairs") / "shards"
    records = (
        WebDatasetRecord(f"{i:06d}", image=png(i), text=f"a red circle number {i}", meta={"id": i})
        for i in range(N_SAMPLES)
    )
    write_webdataset(records, out, SHARD_SIZE, index={"format": "pairs"})
    return out


@pytest.fixture(scope="module")
def tokenizer(micro_data: Path) -> MoMoTokenizer:
    return MoMoTokenizer.load(micro_data / "tokenizer.json")


def loader(shards: Path, tokenizer: MoMoTokenizer, **options) -> StreamLoader:
    source = ShardStream("pair", ShardSet.open([shards]), CONFIG, tokenizer)
    options = {"batch_size": BATCH, "seed": 3, "shuffle_shards": 3, **options}
    return StreamLoader("pairs", source, Collate("pair", CONFIG, tokenizer.pad_id), **options)


def ids_of(steps: list) -> list[list[int]]:
    """Per step, the sample ids of this rank's micro-batches in order."""
    return [[i for _, batch in step for i in batch.meta["id"]] for step in steps]


def test_every_sample_once_per_epoch_over_two_ranks_and_two_workers(pair_shards, tokenizer) -> None:
    steps_per_epoch = N_SAMPLES // BATCH
    seen: list[int] = []
    for rank in (0, 1):
        ranked = loader(pair_shards, tokenizer, rank=rank, world=2, micro_batch_size=2, workers=2)
        assert ranked.accumulation == 2
        steps = [ranked.next_step() for _ in range(steps_per_epoch)]
        assert [m for m, _ in steps[0]] == [2 * rank, 2 * rank + 1]
        seen += [i for step in ids_of(steps) for i in step]
        assert ranked.state_dict()["epoch"] == 0
        ranked.close()
    assert sorted(seen) == list(range(N_SAMPLES))  # all of them, none twice


def test_micro_batches_do_not_depend_on_the_rank_split(pair_shards, tokenizer) -> None:
    alone = loader(pair_shards, tokenizer, micro_batch_size=4)  # 1 process, 2 accumulation passes
    halves = [loader(pair_shards, tokenizer, rank=r, world=2, workers=1) for r in (0, 1)]
    for _ in range(3):
        mine = alone.next_step()
        theirs = [step for half in halves for step in half.next_step()]
        assert [m for m, _ in mine] == [m for m, _ in theirs] == [0, 1]
        for (_, a), (_, b) in zip(mine, theirs, strict=True):
            assert a.meta["id"] == b.meta["id"]
            assert a.pixels is not None and b.pixels is not None and a.pixels.equal(b.pixels)
    for half in halves:
        half.close()


def test_exact_resume_mid_epoch(pair_shards, tokenizer) -> None:
    uninterrupted = loader(pair_shards, tokenizer, workers=2)
    for _ in range(25):
        uninterrupted.next_step()
    state = uninterrupted.state_dict()
    assert state == {"epoch": 0, "cursor": 200, "skipped": 0}
    expected = [uninterrupted.next_step() for _ in range(10)]  # crosses into epoch 1

    resumed = loader(pair_shards, tokenizer, workers=1)
    resumed.load_state_dict(state)
    got = [resumed.next_step() for _ in range(10)]
    assert ids_of(got) == ids_of(expected)
    for step_a, step_b in zip(expected, got, strict=True):
        for (_, a), (_, b) in zip(step_a, step_b, strict=True):
            assert a.input_ids is not None and b.input_ids is not None and a.input_ids.equal(b.input_ids)
    assert resumed.state_dict()["epoch"] == 1
    uninterrupted.close()
    resumed.close()


def test_order_shuffles_shards_then_items_within_windows() -> None:
    order = EpochOrder([20] * 12, shuffle_shards=3, seed=5)
    epoch = order.take(0, 0, 240)
    assert sorted(epoch.tolist()) == list(range(240))
    for window in range(4):  # each window holds exactly the items of 3 whole shards
        shards = {int(i) // 20 for i in epoch[window * 60 : (window + 1) * 60]}
        assert len(shards) == 3
    assert not np.array_equal(epoch, order.take(1, 0, 240))
    assert np.array_equal(order.take(0, 50, 30), epoch[50:80])  # random access = the same order
    # A source in RAM is one shard: its order is the plain per-epoch permutation.
    assert np.array_equal(
        EpochOrder([100], 8, 7).take(2, 0, 100), np.random.default_rng([7, 2]).permutation(100)
    )
