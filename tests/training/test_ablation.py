from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import torch

from momo.artifact import load_artifact
from momo.config import get_preset
from momo.export import export_artifact
from momo.model import MoMoEncoder, count_parameters
from momo.runtime import load_runtime
from momo.store import ModelStore
from training import ablation, ablation_arms, engine
from training.pretrain import run_pretraining
from training.recipe import Recipe


def test_arms_change_only_what_they_claim(micro_recipe: Recipe) -> None:
    base = micro_recipe
    separate = ablation_arms.arm_separate(base)
    assert separate.model_config().towers == "separate" and separate.stages == base.stages

    merged = ablation_arms.arm_all_at_once(base)
    assert [s.name for s in merged.stages] == ["all_at_once", "downstream"]
    assert merged.stages[0].steps == sum(s.steps for s in base.stages[:3])
    every_stream = {(s.kind, tuple(s.objectives)) for st in base.stages[:3] for s in st.streams}
    assert {(s.kind, tuple(s.objectives)) for s in merged.stages[0].streams} == every_stream
    # From step 0 every stream and objective is touched.
    touched = {o for _, s in engine.active_streams(merged.stages[0], 0) for o in s.objectives}
    assert touched == {"mim", "mlm", "itc", "itm", "mmm"}

    matched = ablation_arms.arm_all_at_once_matched(base)
    assert matched.stages[0].steps == merged.stages[0].steps and matched.stages[1:] == merged.stages[1:]
    # Samples per stream (steps × batch) match the staged recipe, up to rounding of the batch.
    staged_samples = [st.steps * s.batch_size for st in base.stages[:3] for s in st.streams]
    matched_samples = [matched.stages[0].steps * s.batch_size for s in matched.stages[0].streams]
    for staged, same in zip(staged_samples, matched_samples, strict=True):
        assert abs(same - staged) <= matched.stages[0].steps / 2 or same == 2 * matched.stages[0].steps
    # Micro recipe: 3 stages × 3 steps, batches of 8 → 9 steps of round(8 × 3 / 9) = 3 items.
    assert {s.batch_size for s in matched.stages[0].streams} == {3}
    assert sum(matched_samples) < sum(merged.stages[0].steps * s.batch_size for s in merged.stages[0].streams)

    alternating = ablation_arms.arm_alternating(base)
    for original, alt in zip(base.stages[:3], alternating.stages[:3], strict=True):
        assert alt.mode == "alternating" and alt.steps == original.steps * len(original.streams)
        # Each step touches exactly one stream, and over the stage every stream gets `original.steps`.
        counts: dict[str, int] = {}
        for step in range(alt.steps):
            ((_, spec),) = engine.active_streams(alt, step)
            counts[spec.name] = counts.get(spec.name, 0) + 1
        assert counts == {s.name: original.steps for s in original.streams}
    assert alternating.stages[3] == base.stages[3]  # the downstream stage is common to every arm
    assert ablation_arms.arm_small(base).preset == "momo-small"


def test_separate_towers_build_train_and_export(micro_recipe: Recipe, tmp_path: Path) -> None:
    config = get_preset("momo-test", towers="separate")
    assert count_parameters(config) > 1.8 * count_parameters(get_preset("momo-test"))
    encoder = MoMoEncoder(config)
    assert hasattr(encoder, "fusion_tower") and not hasattr(encoder, "encoder")
    recipe = dataclasses.replace(ablation_arms.arm_separate(micro_recipe), stages=micro_recipe.stages[2:])
    result = run_pretraining(
        recipe, tmp_path / "run", progress=False, register_name="sep", store_root=tmp_path / "s"
    )
    path = ModelStore(tmp_path / "s").resolve(result.reference)
    report = export_artifact(path, onnx=True, torchscript=True, check_parity=True, batch_sizes=(1, 3))
    assert report.parity_ok
    artifact = load_artifact(path)
    onnx, eager = load_runtime(artifact, "onnx"), load_runtime(artifact, "torch")
    pixels = torch.randn(2, 3, config.image_size, config.image_size).numpy()
    assert abs(onnx.encode_images(pixels) - eager.encode_images(pixels)).max() <= 1e-4


def test_ablation_command_end_to_end_at_micro_budget(micro_recipe: Recipe, tmp_path: Path) -> None:
    base = dataclasses.replace(
        micro_recipe, stages=[dataclasses.replace(s, steps=2) for s in micro_recipe.stages]
    )
    eval_settings = {
        "max_train": 100,
        "max_test": 50,
        "max_retrieval": 40,
        "max_vqa": 50,
        "groups": ("vision", "multimodal"),
    }
    study = functools.partial(
        ablation.run_ablation,
        base,
        tmp_path,
        seeds=[0, 1],
        key_arms=["momo"],
        progress=False,
        eval_settings=eval_settings,
    )
    report = study(arms=["momo", "alternating"], log=lambda _: None)
    table = report["table"]
    assert list(table) == ["momo", "alternating"]
    assert table["momo"]["seeds"] == [0, 1] and table["alternating"]["seeds"] == [0]
    assert table["momo"]["multimodal_spread"] is not None
    markdown = (tmp_path / "ablation.md").read_text()
    assert markdown.splitlines()[0].startswith("| arm | seeds | vision")
    assert "| momo | 2 |" in markdown and "| alternating | 1 |" in markdown
    # The per-task table: one row per arm, one column per task's primary metric.
    task_lines = markdown.split("Per task")[1].strip().splitlines()[2:]
    assert task_lines[0].startswith("| arm | fashion_mnist_linear_probe (accuracy) |")
    assert [line.split(" | ")[0] for line in task_lines[2:]] == [
        "| momo",
        "| alternating",
        "| *random weights*",
        "| *majority / chance*",
        "| *raw features*",
    ]
    for name in ("ablation.json", "ablation_scores.png", "ablation_losses.png"):
        assert (tmp_path / name).stat().st_size > 500

    # Extending the study reuses the finished runs (same recipe) and trains only the new arm.
    logged: list[str] = []
    extended = study(arms=["momo", "all_at_once_matched"], log=logged.append)
    assert sum("reused" in line for line in logged) == 2
    assert list(extended["table"]) == ["momo", "all_at_once_matched"]
    assert extended["table"]["momo"] == table["momo"]
    assert extended["baselines_macro"] == report["baselines_macro"] != {}
    finished = json.loads((tmp_path / "ablation_runs.json").read_text())
    assert sorted((r["arm"], r["seed"]) for r in finished) == [
        ("all_at_once_matched", 0),
        ("alternating", 0),
        ("momo", 0),
        ("momo", 1),
    ]
    # A different budget is a different recipe: nothing is reused.
    logged.clear()
    study(arms=["momo"], seeds=[0], key_arms=[], budget=2.0, log=logged.append)
    assert not any("reused" in line for line in logged)
    assert any("trained with another recipe" in line for line in logged)
    steps = [json.loads(line)["global_step"] for line in (tmp_path / "runs/momo-seed0/metrics.jsonl").open()]
    assert max(steps) == 4 * 4  # 4 stages × 2 steps × budget 2, from scratch rather than resumed
