from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from momo.artifact import load_artifact
from momo.store import ModelStore
from momo.tokenizer import MoMoTokenizer
from tests.training.conftest import micro_recipe_dict, torchrun_two
from training import engine
from training.distributed import DistInfo, Replicated
from training.pretrain import run_pretraining
from training.recipe import Recipe, recipe_from_dict


def _stage_setup(recipe: Recipe, stage_index: int, lr: float | None = None):
    config = recipe.model_config()
    tokenizer = MoMoTokenizer.load(Path(recipe.data_dir) / "tokenizer.json")
    stage = recipe.stages[stage_index]
    if lr is not None:
        stage = dataclasses.replace(stage, lr=lr, grad_clip=1e9)
    data = {
        s.name: engine.build_stream(s, Path(recipe.data_dir), config, tokenizer, None) for s in stage.streams
    }
    torch.manual_seed(0)
    module = engine.build_module(config, stage, engine.token_info(tokenizer), None)
    return config, tokenizer, stage, data, module


def _loaders(stage, data, config):
    return {
        s.name: engine.build_loader(s, data[s.name], config, i, DistInfo())
        for i, s in enumerate(stage.streams)
    }


def _step(module, optimizer, scheduler, stage, loaders, step, global_step=0):
    model = Replicated(module, DistInfo(), torch.device("cpu"))
    state = engine.StepState(global_step=global_step, seed=0)
    return engine.train_step(model, optimizer, scheduler, stage, loaders, step, state, torch.device("cpu"))


def test_simultaneous_step_equals_sum_of_per_stream_gradients(micro_recipe: Recipe) -> None:
    config, _tok, stage, data, module = _stage_setup(micro_recipe, 2, lr=0.0)  # text + pairs
    optimizer = engine.build_optimizer(module, stage)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, engine.warmup_cosine(stage))
    _step(module, optimizer, scheduler, stage, _loaders(stage, data, config), 0, global_step=7)
    combined = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    # The same batches and randomness, one stream at a time, gradients summed by hand.
    expected: dict[str, torch.Tensor] = {}
    loaders = _loaders(stage, data, config)
    for index, spec in enumerate(stage.streams):
        module.zero_grad(set_to_none=True)
        [(_micro, batch)] = loaders[spec.name].next_step()
        generator = engine.step_generator(0, 0, 7, index)
        losses: dict[str, torch.Tensor] = {}
        context: dict = {}
        for objective in spec.objectives:
            losses.update(module.objectives[objective](module.encoder, batch, generator, context))
        engine.weighted_sum(losses, stage.weights).backward()
        for n, p in module.named_parameters():
            if p.grad is not None:
                expected[n] = expected.get(n, torch.zeros_like(p)) + p.grad
    assert set(expected) == set(combined)
    for name, grad in expected.items():
        assert torch.allclose(combined[name], grad, atol=1e-6, rtol=1e-5), name
    # Both streams contributed to the shared encoder.
    assert combined["encoder.text_embed.token.weight"].abs().sum() > 0
    assert combined["encoder.image_embed.patch.weight"].abs().sum() > 0


def test_alternating_mode_touches_one_stream_per_step(micro_recipe: Recipe) -> None:
    config, _tok, stage, data, module = _stage_setup(micro_recipe, 1)
    stage = dataclasses.replace(stage, mode="alternating")
    assert [s.name for _, s in engine.active_streams(stage, 0)] == ["scenes"]
    assert [s.name for _, s in engine.active_streams(stage, 1)] == ["text"]
    simultaneous = dataclasses.replace(stage, mode="simultaneous")
    assert [s.name for _, s in engine.active_streams(simultaneous, 5)] == ["scenes", "text"]
    loaders = _loaders(stage, data, config)
    optimizer = engine.build_optimizer(module, stage)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, engine.warmup_cosine(stage))
    logs = _step(module, optimizer, scheduler, stage, loaders, 0)
    assert "scenes/mim" in logs and "text/mlm" not in logs
    assert loaders["scenes"].cursor == 8 and loaders["text"].cursor == 0
    # The text stream's objective got no gradient on the image step.
    assert module.objectives["mlm"].head.bias.grad is None


def test_hand_over_asserts_exact_key_sets(micro_recipe: Recipe) -> None:
    _c, _t, _s, _d, images_module = _stage_setup(micro_recipe, 0)
    _c, _t, _s, _d, text_module = _stage_setup(micro_recipe, 1)
    _c, _t, _s, _d, pairs_module = _stage_setup(micro_recipe, 2)
    missing, unexpected = engine.hand_over(text_module, images_module.state_dict())
    assert {k.split(".")[1] for k in missing} == {"mlm"} and unexpected == []
    missing, unexpected = engine.hand_over(pairs_module, text_module.state_dict())
    assert {k.split(".")[1] for k in missing} == {"itc", "itm", "mmm"}
    assert {k.split(".")[1] for k in unexpected} == {"mim"}
    assert torch.equal(
        pairs_module.encoder.text_embed.token.weight, text_module.encoder.text_embed.token.weight
    )
    broken = dict(text_module.state_dict())
    broken.pop("encoder.encoder.norm.weight")
    with pytest.raises(engine.HandOverError, match=r"encoder.encoder.norm.weight"):
        engine.hand_over(pairs_module, broken)


def test_non_finite_loss_stops_with_clear_message(micro_recipe: Recipe) -> None:
    config, _tok, stage, data, module = _stage_setup(micro_recipe, 0)
    with torch.no_grad():
        module.encoder.image_embed.patch.weight.fill_(float("nan"))
    optimizer = engine.build_optimizer(module, stage)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, engine.warmup_cosine(stage))
    with pytest.raises(engine.NonFiniteLossError, match=r"stage 'images' step 0 .*loss 'mim'.*--resume"):
        _step(module, optimizer, scheduler, stage, _loaders(stage, data, config), 0)


@pytest.mark.parametrize(
    ("source", "stop_after"),
    [("memory", 4), ("shards", 4), ("memory", 3)],  # 3: at the first stage's end, its last checkpoint
)
def test_resumed_run_equals_uninterrupted(
    micro_shards: Path, tmp_path: Path, source: str, stop_after: int
) -> None:
    recipe = recipe_from_dict(micro_recipe_dict(micro_shards, steps=3))
    recipe = dataclasses.replace(recipe, stages=recipe.stages[1:3])  # images+text, then text+pairs
    if source == "shards":
        recipe = recipe.from_shards(workers=1)
    full = run_pretraining(recipe, tmp_path / "full", progress=False)
    interrupted = run_pretraining(recipe, tmp_path / "resumed", progress=False, stop_after=stop_after)
    assert interrupted.stopped_early
    assert (tmp_path / "resumed/checkpoints/last.pt").exists()
    resumed = run_pretraining(recipe, tmp_path / "resumed", progress=False, resume="auto")
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    assert set(full_state) == set(resumed_state)
    for key, value in full_state.items():
        assert torch.equal(value, resumed_state[key]), key
    rows = [json.loads(x) for x in (tmp_path / "resumed/metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows] == list(range(1, 7))


def test_micro_four_stage_run_registers_loadable_artifact(micro_recipe: Recipe, tmp_path: Path) -> None:
    store_root = tmp_path / "store"
    result = run_pretraining(
        micro_recipe, tmp_path / "run", progress=False, register_name="micro", store_root=store_root
    )
    assert result.reference == "micro:v1"
    artifact = load_artifact(ModelStore(store_root).resolve("micro:v1"))
    assert set(artifact.heads.heads) == {"itm", "vqa"}
    assert "yes" in artifact.heads.heads["vqa"].labels
    model = artifact.load_model()
    assert model.head_specs["vqa"].input == "pair"
    manifest = artifact.manifest
    assert set(manifest.metrics["pretrain_final_losses"]) == {
        "images",
        "images_text",
        "text_pairs",
        "downstream",
    }
    assert manifest.recipe["steps"] == {"images": 3, "images_text": 3, "text_pairs": 3, "downstream": 3}
    assert (tmp_path / "run/loss_curves.png").stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir())[-1] == "stage4-downstream-end.pt"


DDP_SCRIPT = """
import json, sys, torch, torch.distributed as dist
from pathlib import Path
from training.recipe import recipe_from_dict
from training.pretrain import run_pretraining
recipe = recipe_from_dict(json.loads(Path(sys.argv[1]).read_text()))
torch.set_num_threads(1)
result = run_pretraining(recipe, Path(sys.argv[2]), progress=False)
checksum = sum(float(p.double().sum()) for p in result.model.state_dict().values())
Path(sys.argv[2], f"rank{dist.get_rank()}.json").write_text(json.dumps({"checksum": checksum,
    "world": dist.get_world_size()}))
dist.destroy_process_group()
"""


def test_two_process_data_parallel_run(micro_data: Path, tmp_path: Path) -> None:
    recipe = micro_recipe_dict(micro_data, steps=2)
    recipe["stages"] = recipe["stages"][1:3]
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    out = tmp_path / "run"
    torchrun_two(DDP_SCRIPT, [str(tmp_path / "recipe.json"), str(out)], tmp_path)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2
    # DDP keeps the replicas identical.
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=0, abs=1e-9)
    assert (out / "checkpoints/last.pt").exists()


def test_bf16_autocast_where_measured_faster() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert engine.use_bf16("auto", "momo-base", cuda, ["mim"])
    # On CPU: MIM measured slower in bf16 (fp32), the pair objectives faster (bf16), per preset.
    assert not engine.use_bf16("auto", "momo-tiny", cpu, ["mim"])
    assert engine.use_bf16("auto", "momo-tiny", cpu, ["itc", "itm", "mmm"])
    assert engine.use_bf16("auto", "momo-base", cpu, ["mim"])  # larger matmuls: faster in bf16
    assert not engine.use_bf16("auto", "momo-test", cpu, ["mlm"])  # not measured: fp32
    assert engine.use_bf16("bf16", "momo-tiny", cpu, ["mim"])
    assert not engine.use_bf16("fp32", "momo-base", cuda, ["itc"])
