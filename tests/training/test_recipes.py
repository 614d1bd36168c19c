"""Every bundled recipe loads; objective options are checked against the registry's typed options."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.losses import OBJECTIVES, MLMOptions, parse_options
from training.recipe import load_recipe, recipe_from_dict

RECIPE_DIR = Path(__file__).resolve().parents[2] / "training" / "recipes"
RECIPES = sorted(RECIPE_DIR.rglob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_bundled_recipe_loads(path: Path) -> None:
    recipe = load_recipe(path)
    for stage in recipe.stages:
        assert set(stage.objectives) <= set(OBJECTIVES)


def test_the_default_recipe_is_v2() -> None:
    recipe = load_recipe(RECIPE_DIR / "default.yaml")
    stages = {s.name: s for s in recipe.stages}
    text = next(s for s in stages["images_text"].streams if s.kind == "text")
    assert text.batch_size == 128 and parse_options(
        "mlm", stages["images_text"].objective_options["mlm"]
    ) == (MLMOptions(probability=0.3))
    assert "ttc" in stages["text_pairs"].objectives
    pairs = next(s for s in stages["text_pairs"].streams if s.kind == "pair")
    assert any("clipart" in p for p in pairs.paths)


def test_unknown_or_mistyped_objective_options_fail_when_the_recipe_loads() -> None:
    stage = {
        "name": "s",
        "steps": 1,
        "streams": [
            {"name": "t", "kind": "text", "paths": ["x.txt"], "batch_size": 2, "objectives": ["mlm"]}
        ],
    }
    with pytest.raises(ValueError, match="unknown options \\['probabilty'\\]"):
        recipe_from_dict(
            {"name": "r", "stages": [{**stage, "objective_options": {"mlm": {"probabilty": 0.3}}}]}
        )
    with pytest.raises(ValueError, match="wrong type"):
        recipe_from_dict(
            {"name": "r", "stages": [{**stage, "objective_options": {"itm": {"max_batch": "8"}}}]}
        )
    assert parse_options("itm", {"max_batch": 8}).max_batch == 8


def test_the_bundled_recipe_runs_from_shards(micro_shards: Path, tmp_path: Path) -> None:
    """The default recipe's code path, every stream (definitions included) read from the micro data's
    shards, with the momo-test preset and 2 steps a stage."""
    import yaml

    from training.pretrain import run_pretraining

    raw = yaml.safe_load((RECIPE_DIR / "default.yaml").read_text())
    for stage in raw["stages"]:
        stage.update(steps=2, warmup_steps=1, log_every=1, checkpoint_every=0)
        for stream in stage["streams"]:
            stream.update(batch_size=8)
            stream.pop("limit", None)
    raw.update(
        preset="momo-test",
        data_dir=str(micro_shards),
        tokenizer={"corpus": ["text/train.txt"], "min_frequency": 1},
    )
    recipe = recipe_from_dict(raw).from_shards(workers=0)
    assert all(s.source == "shards" for stage in recipe.stages for s in stage.streams)
    result = run_pretraining(recipe, tmp_path / "run", progress=False)
    assert result.steps == {"images": 2, "images_text": 2, "text_pairs": 2, "downstream": 2}
    assert {"definitions/ttc", "pairs/itm", "pairs/itc"} <= set(result.final_losses["text_pairs"])
    assert result.model is not None and result.model.token_head is not None
