"""The base recipe (training/recipes/base.yaml): its structure, and a momo-test smoke run of that
structure from shards — the recipe's code path on CPU, with the sizes overridden."""

from __future__ import annotations

from pathlib import Path

import yaml

from momo.config import get_preset
from training.data.sharding import shard_source
from training.pretrain import run_pretraining
from training.recipe import load_recipe, recipe_from_dict

BASE = Path(__file__).resolve().parents[2] / "training" / "recipes" / "base.yaml"
# What the micro data offers in place of each data set the base recipe reads.
MICRO_SOURCE = {
    "shards/images/train": "fashion_mnist/train/images",
    "shards/text/train": "text/train.txt",
    "shards/pairs/train": "shapes/train/pairs.jsonl",
}


def test_base_recipe_is_momo_base_from_shards_in_three_stages() -> None:
    recipe = load_recipe(BASE)
    config = recipe.model_config()
    assert config == get_preset("momo-base") and config.image_size == 224
    assert [s.name for s in recipe.stages] == ["images", "images_text", "text_pairs"]
    assert [s.objectives for s in recipe.stages] == [["mim"], ["mim", "mlm"], ["mlm", "itc", "itm", "mmm"]]
    streams = [spec for stage in recipe.stages for spec in stage.streams]
    assert all(s.source == "shards" and s.workers > 0 for s in streams)
    assert all(s.micro_batch_size and s.batch_size % s.micro_batch_size == 0 for s in streams)
    assert recipe.precision == "auto"


def test_base_recipe_runs_from_shards_with_a_test_preset(micro_data: Path, tmp_path: Path) -> None:
    raw = yaml.safe_load(BASE.read_text())
    data_dir = tmp_path / "data"
    for stage in raw["stages"]:
        stage.update(steps=2, warmup_steps=1, log_every=1, checkpoint_every=0)
        for stream in stage["streams"]:
            stream.update(batch_size=8, micro_batch_size=4, workers=1, shuffle_shards=2)
            for path in stream["paths"]:  # shards of the micro data wherever the recipe looks
                shard_source(micro_data / MICRO_SOURCE[path], data_dir / path, shard_size=50, progress=False)
    (data_dir / "text").mkdir()
    (data_dir / "text" / "tokenizer.txt").write_text((micro_data / "text/train.txt").read_text())
    raw.update(preset="momo-test", data_dir=str(data_dir), tokenizer={**raw["tokenizer"], "min_frequency": 1})
    result = run_pretraining(recipe_from_dict(raw), tmp_path / "run", progress=False)
    assert result.steps == {"images": 2, "images_text": 2, "text_pairs": 2}
    assert set(result.final_losses["text_pairs"]) == {"text/mlm", "pairs/itc", "pairs/itm", "pairs/mmm"}
