"""torch DDP and FSDP against one process: 2 processes × half of every global batch give the
parameters 1 process gives with the whole batch (as 2 accumulated micro-batches), in both update
modes; an FSDP run interrupted and resumed from its (gathered) checkpoint ends where an uninterrupted
one does.

The micro-batch is the unit of a step's randomness (masks, negatives) and of its batch-coupled
losses (contrastive, token-normalised MLM), so "half the batch" per rank is compared with the same
two halves accumulated in one process; everything else — DDP's reduction, no_sync() for all but
the last backward, unused parameters in alternating mode, the data split over ranks and workers —
has to match. Real processes: torchrun with the gloo backend.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.training.conftest import torchrun_two
from training.distributed import FSDP_OPTIMIZER_FORMAT, DistInfo, Replicated
from training.pretrain import run_pretraining
from training.recipe import Recipe, recipe_from_dict

DDP_RUNS = """
import json, sys, torch, torch.distributed as dist
from pathlib import Path
from training.recipe import recipe_from_dict
from training.pretrain import run_pretraining
torch.set_num_threads(1)
for name, recipe in json.loads(Path(sys.argv[1]).read_text()).items():
    out = Path(sys.argv[2]) / name
    if name.endswith("-resumed"):  # interrupted after 2 steps, then resumed from the checkpoint
        run_pretraining(recipe_from_dict(recipe), out, progress=False, stop_after=2)
        run_pretraining(recipe_from_dict(recipe), out, progress=False, resume="auto")
    else:
        run_pretraining(recipe_from_dict(recipe), out, progress=False)
dist.destroy_process_group()
"""


def mixed_recipe(data_dir: Path, mode: str, steps: int = 4, parallelism: str = "ddp") -> Recipe:
    """One stage of three streams with disjoint heads: MIM on scenes, MLM on text, ITC+ITM on pairs."""
    pairs = ["shapes/train/pairs.jsonl", "emoji/train/pairs.jsonl"]

    def stream(name: str, kind: str, paths: list[str], objectives: list[str]) -> dict:
        return {"name": name, "kind": kind, "paths": paths, "objectives": objectives}

    streams = [
        stream("scenes", "image", pairs, ["mim"]),
        stream("text", "text", ["text/train.txt"], ["mlm"]),
        stream("pairs", "pair", pairs, ["itc", "itm"]),
    ]
    stage = {
        "name": "mixed",
        "steps": steps,
        "lr": 2e-3,
        "warmup_steps": 1,
        "weight_decay": 0.05,  # a zero-filled gradient would decay an idle head: must not happen
        "log_every": 1,
        "checkpoint_every": 1,
        "mode": mode,
        "objective_options": {"itm": {"max_batch": 4}},
        "streams": [{**s, "batch_size": 8, "micro_batch_size": 4} for s in streams],
    }
    return recipe_from_dict(
        {
            "name": f"{parallelism}-{mode}",
            "preset": "momo-test",
            "parallelism": parallelism,
            "seed": 0,
            "data_dir": str(data_dir),
            "tokenizer": {"path": "tokenizer.json"},
            "stages": [stage],
        }
    )


def _module_state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["module"]


def test_two_processes_with_half_batches_equal_one_process(micro_shards: Path, tmp_path: Path) -> None:
    recipes = {
        "simultaneous": mixed_recipe(micro_shards, "simultaneous"),
        # alternating from shards, decoded in a DataLoader worker per stream and rank
        "alternating": mixed_recipe(micro_shards, "alternating").from_shards(workers=1),
    }
    # The same runs with the module sharded by FSDP (one process: parallelism changes nothing).
    sharded = {
        "fsdp-simultaneous": mixed_recipe(micro_shards, "simultaneous", parallelism="fsdp"),
        "fsdp-alternating-resumed": mixed_recipe(micro_shards, "alternating", parallelism="fsdp").from_shards(
            workers=1
        ),
    }
    runs = {**recipes, **sharded}
    (tmp_path / "recipes.json").write_text(json.dumps({k: r.to_dict() for k, r in runs.items()}))
    torchrun_two(DDP_RUNS, [str(tmp_path / "recipes.json"), str(tmp_path / "ddp")], tmp_path)

    torch.set_num_threads(1)
    for name, recipe in recipes.items():
        single = run_pretraining(recipe, tmp_path / "single" / name, progress=False)
        assert single.steps == {"mixed": 4}
        one = _module_state(tmp_path / "single" / name)
        start = _module_state_at_start(recipe)
        for parallel in (name, *(k for k in sharded if k.split("-")[1] == name)):
            two = _module_state(tmp_path / "ddp" / parallel)
            assert set(one) == set(two), parallel
            for key, value in one.items():
                assert torch.allclose(value, two[key], rtol=1e-4, atol=1e-6), f"{parallel}: {key}"
        # Every head moved (each stream ran), so the comparison is not between untouched tensors.
        for head in ("mim", "mlm", "itc", "itm"):
            moved = [
                k for k in one if k.startswith(f"objectives.{head}.") and not torch.equal(one[k], start[k])
            ]
            assert moved, f"{name}: the {head} head never moved"

    # Alternating: steps run scenes, text, pairs, scenes. Under DDP and FSDP the MLM head, idle after
    # step 2 (whose checkpoint is step2), is exactly where it was: no zero gradient reached AdamW's
    # decay and momentum.
    for run in ("alternating", "fsdp-alternating-resumed"):
        checkpoints = tmp_path / "ddp" / run / "checkpoints"
        states = [
            torch.load(checkpoints / f, map_location="cpu", weights_only=False)["module"]
            for f in ("stage1-step2.pt", "stage1-step3.pt", "stage1-mixed-end.pt")
        ]
        mlm = [k for k in states[0] if k.startswith("objectives.mlm.")]
        assert mlm
        for key in mlm:
            assert torch.equal(states[0][key], states[1][key]), (run, key)
            assert torch.equal(states[0][key], states[2][key]), (run, key)


def _module_state_at_start(recipe: Recipe) -> dict[str, torch.Tensor]:
    """The module as the stage builds it (same seed), before any step."""
    from momo.tokenizer import MoMoTokenizer
    from training import engine

    tokenizer = MoMoTokenizer.load(Path(recipe.data_dir) / "tokenizer.json")
    torch.manual_seed(recipe.seed)
    module = engine.build_module(recipe.model_config(), recipe.stages[0], engine.token_info(tokenizer), None)
    return module.state_dict()


def test_a_checkpoint_resumes_only_with_the_parallelism_it_was_written_with() -> None:
    """An FSDP checkpoint's optimizer state is keyed by name; a run without FSDP says so, not KeyError."""
    module = torch.nn.Linear(2, 2)
    replicated = Replicated(module, DistInfo(), torch.device("cpu"), "fsdp")  # one process: not sharded
    optimizer = torch.optim.AdamW(module.parameters())
    with pytest.raises(ValueError, match="resume with the recipe's `parallelism`"):
        replicated.load_optimizer_state_dict(
            optimizer, FSDP_OPTIMIZER_FORMAT, {"state": {}, "param_groups": []}
        )
    replicated.load_optimizer_state_dict(optimizer, "torch", optimizer.state_dict())  # its own format loads
