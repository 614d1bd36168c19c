"""Micro data (written once per session by the real `prepare_all`) and a micro recipe over it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.recipe import Recipe, recipe_from_dict


@pytest.fixture(scope="session")
def micro_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from momo.tokenizer import MoMoTokenizer
    from training.data.formats import read_text_lines
    from training.data.prepare import prepare_all

    root = tmp_path_factory.mktemp("micro_data")
    prepare_all(root, scale="micro", install_missing=False, progress=False)
    MoMoTokenizer.train(read_text_lines(root / "text/train.txt"), vocab_size=256, min_frequency=1).save(
        root / "tokenizer.json"
    )
    return root


@pytest.fixture(scope="session")
def micro_shards(micro_data: Path) -> Path:
    """The micro data's bundled sources also as shards (`momo data shard --bundled`), 60 per shard."""
    from training.data.sharding import shard_bundled

    shard_bundled(micro_data, shard_size=60, progress=False)
    return micro_data


def micro_recipe_dict(data_dir: Path, steps: int = 3) -> dict:
    pairs = ["shapes/train/pairs.jsonl", "emoji/train/pairs.jsonl"]
    return {
        "name": "micro",
        "preset": "momo-test",
        "seed": 0,
        "data_dir": str(data_dir),
        "tokenizer": {"path": "tokenizer.json"},
        "stages": [
            {
                "name": "images",
                "steps": steps,
                "lr": 1e-3,
                "warmup_steps": 1,
                "log_every": 1,
                "streams": [
                    {
                        "name": "fashion",
                        "kind": "image",
                        "paths": ["fashion_mnist/train/images"],
                        "batch_size": 8,
                        "objectives": ["mim"],
                    },
                    {
                        "name": "scenes",
                        "kind": "image",
                        "paths": pairs,
                        "batch_size": 8,
                        "objectives": ["mim"],
                    },
                ],
            },
            {
                "name": "images_text",
                "steps": steps,
                "lr": 1e-3,
                "warmup_steps": 1,
                "log_every": 1,
                "streams": [
                    {
                        "name": "scenes",
                        "kind": "image",
                        "paths": pairs,
                        "batch_size": 8,
                        "objectives": ["mim"],
                    },
                    {
                        "name": "text",
                        "kind": "text",
                        "paths": ["text/train.txt"],
                        "batch_size": 8,
                        "objectives": ["mlm"],
                    },
                ],
            },
            {
                "name": "text_pairs",
                "steps": steps,
                "lr": 1e-3,
                "warmup_steps": 1,
                "log_every": 1,
                "objective_options": {"itm": {"max_batch": 4}},
                "streams": [
                    {
                        "name": "text",
                        "kind": "text",
                        "paths": ["text/train.txt"],
                        "batch_size": 8,
                        "objectives": ["mlm"],
                    },
                    {
                        "name": "pairs",
                        "kind": "pair",
                        "paths": pairs,
                        "batch_size": 8,
                        "objectives": ["itc", "itm", "mmm"],
                    },
                ],
            },
            {
                "name": "downstream",
                "steps": steps,
                "lr": 1e-3,
                "warmup_steps": 1,
                "log_every": 1,
                "streams": [
                    {
                        "name": "vqa",
                        "kind": "vqa",
                        "paths": ["shapes/train/vqa.jsonl"],
                        "batch_size": 8,
                        "objectives": ["vqa"],
                    },
                ],
            },
        ],
    }


@pytest.fixture()
def micro_recipe(micro_data: Path) -> Recipe:
    return recipe_from_dict(micro_recipe_dict(micro_data))


def torchrun_two(script: str, args: list[str], tmp_path: Path) -> None:
    """Run `script` (Python source) in 2 real processes under torchrun (gloo, 1 thread each)."""
    (tmp_path / "torchrun_script.py").write_text(script)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(tmp_path / "torchrun_script.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=Path.cwd())
    (tmp_path / "torchrun.stderr").write_text(proc.stderr)
    # Each rank's own last lines: the rank that failed first is often not the last one to print.
    by_rank = [
        "\n".join([line for line in proc.stderr.splitlines() if f"[rank{r}]" in line][-25:]) for r in (0, 1)
    ]
    assert proc.returncode == 0, "\n\n".join([*by_rank, proc.stderr[-1500:]])
