"""The data pipeline, measured in one run (`benchmarks/train_throughput.py --pipeline`):

1. samples/s of the shard loader alone (decode + batch in DataLoader workers, no training);
2. samples/s of the tiny recipe (training/recipes/default.yaml, every stage, `--steps` steps each)
   fed from memory and fed from shards, on the micro data, and the ratio (target >= 0.9);
3. peak RSS of a training process fed from shards of 10k and of 100k images, main process and
   DataLoader workers apart (target: flat in the data-set size);
4. samples/s of 2 DDP processes × 1 thread against 1 process × 2 threads on the tiny recipe's
   images+text stage (target >= 0.8).

Every part runs in fresh processes so that one part's memory or threads do not leak into another.
The machine is shared: the load average is printed, and every target is the median ratio of
`--repeat` pairs of runs measured back to back.

    .venv/bin/python benchmarks/train_throughput.py --pipeline [--steps 40] [--sizes 10000,100000]
        [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "training" / "recipes" / "momo-tiny-tokenizer.json"


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def prepare_micro(root: Path) -> None:
    """The bundled sources at micro scale, and their shards (as `momo data shard --bundled`)."""
    from training.data.prepare import prepare_all
    from training.data.sharding import shard_bundled

    prepare_all(root, scale="micro", install_missing=False, progress=False)
    shard_bundled(root, shard_size=100, progress=False)


def tiny_recipe(data_dir: Path, steps: int, stages: list[str] | None = None) -> Any:
    from training.recipe import load_recipe

    recipe = load_recipe(ROOT / "training/recipes/default.yaml", data_dir=str(data_dir))
    recipe = recipe.select_stages(stages)
    tokenizer = {"path": str(TOKENIZER)}
    return recipe_with(recipe, steps, tokenizer=tokenizer)


def recipe_with(recipe: Any, steps: int, **fields: Any) -> Any:
    import dataclasses

    stages = [dataclasses.replace(s, steps=steps, log_every=1, checkpoint_every=0) for s in recipe.stages]
    return dataclasses.replace(recipe, stages=stages, **fields)


def step_throughput(run_dir: Path, recipe: Any, skip: int = 3) -> float:
    """Samples per second of the training loop over all stages: samples / step seconds, leaving
    out each stage's first `skip` steps (worker start-up, first allocations)."""
    from training.engine import active_streams

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    samples = seconds = 0.0
    for stage in recipe.stages:
        per_step = sum(s.batch_size for _, s in active_streams(stage, 0))
        rates = [r["samples_per_s"] for r in rows if r["stage"] == stage.name][skip:]
        samples += per_step * len(rates)
        seconds += sum(per_step / rate for rate in rates)
    return samples / seconds


# --- children (one measurement each, in a fresh process) -----------------------------------------


def child_train(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from training.pretrain import run_pretraining
    from training.recipe import recipe_from_dict

    torch.set_num_threads(args.threads)
    recipe = recipe_from_dict(json.loads(Path(args.recipe).read_text()))
    run_pretraining(recipe, Path(args.out), progress=False, device="cpu")
    return {
        "samples_per_s": step_throughput(Path(args.out), recipe),
        "rss_main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_workers_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def child_loader(args: argparse.Namespace) -> dict[str, Any]:
    """The shard loader alone over one stage's streams: samples/s of decode + batch."""
    import torch

    from momo.tokenizer import MoMoTokenizer
    from training import engine
    from training.distributed import DistInfo
    from training.recipe import recipe_from_dict

    torch.set_num_threads(args.threads)
    recipe = recipe_from_dict(json.loads(Path(args.recipe).read_text()))
    config, tokenizer = recipe.model_config(), MoMoTokenizer.load(TOKENIZER)
    data_dir = Path(recipe.data_dir)
    samples, seconds = 0, 0.0
    for stage in recipe.stages:
        for i, spec in enumerate(stage.streams):
            source = engine.build_stream(spec, data_dir, config, tokenizer, None)
            loader = engine.build_loader(spec, source, config, i, DistInfo())
            loader.next_step()  # start the workers
            start = time.perf_counter()
            for _ in range(args.steps):
                loader.next_step()
            seconds += time.perf_counter() - start
            samples += args.steps * spec.batch_size
            loader.close()
    return {"samples_per_s": samples / seconds}


def run_child(
    kind: str, recipe: Any, out: Path, threads: int, steps: int = 0, env: dict | None = None
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(recipe.to_dict()))
    cmd = [sys.executable, __file__, "--child", kind, "--recipe", str(out / "recipe.json")]
    cmd += ["--out", str(out / "run"), "--threads", str(threads), "--steps", str(steps)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def image_shards(out: Path, count: int) -> Path:
    """`count` distinct 48×48 PNG images in shards of 1000 (a smooth pattern: small files)."""
    import numpy as np
    from PIL import Image

    from training.data.shards import WebDatasetRecord, write_webdataset

    def records():
        ramp = np.add.outer(np.arange(48), np.arange(48)).astype(np.uint8)
        for i in range(count):
            image = np.stack([ramp + i % 251, ramp * 2 + i % 13, np.full_like(ramp, i % 256)], axis=-1)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            yield WebDatasetRecord(f"{i:09d}", image=buffer.getvalue(), meta={"label": str(i % 10)})

    write_webdataset(records(), out, 1000, index={"format": "image_folder"})
    return out


def rss_recipe(shards: Path, steps: int) -> Any:
    from training.recipe import recipe_from_dict

    stream = {
        "name": "images",
        "kind": "image",
        "source": "shards",
        "paths": [str(shards)],
        "batch_size": 64,
        "workers": 2,
        "shuffle_shards": 8,
        "objectives": ["mim"],
    }
    stage = {
        "name": "images",
        "steps": steps,
        "warmup_steps": 1,
        "weights": {"mim": 1.0},
        "streams": [stream],
    }
    data = {"name": "rss", "preset": "momo-tiny", "tokenizer": {"path": str(TOKENIZER)}, "stages": [stage]}
    return recipe_from_dict(data)


def ddp_run(recipe: Any, out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(recipe.to_dict()))
    script = out / "ddp.py"
    script.write_text(
        "import json, sys, torch\nfrom pathlib import Path\n"
        "from training.recipe import recipe_from_dict\nfrom training.pretrain import run_pretraining\n"
        "torch.set_num_threads(1)\n"
        "run_pretraining(recipe_from_dict(json.loads(Path(sys.argv[1]).read_text())), Path(sys.argv[2]),"
        " progress=False, device='cpu')\n"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(script), str(out / "recipe.json"), str(out / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return step_throughput(out / "run", recipe)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40, help="steps per stage of each training run")
    parser.add_argument("--sizes", default="10000,100000", help="images in shards for the RSS runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="A/B pairs of runs for parts 2 and 4")
    parser.add_argument("--child", choices=["train", "loader"], help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps((child_train if args.child == "train" else child_loader)(args)))
        return

    print(f"cores {os.cpu_count()}, threads {args.threads}; load average at start {load()}")
    with tempfile.TemporaryDirectory(prefix="momo-pipeline-") as tmp:
        root = Path(tmp)
        prepare_micro(root / "data")
        memory = tiny_recipe(root / "data", args.steps)
        shards = memory.from_shards(workers=1)

        loader = run_child("loader", shards, root / "loader", args.threads, steps=args.steps)
        rate = loader["samples_per_s"]
        print(f"1. shard loader alone (the tiny recipe's streams, 1 worker each): {rate:.0f} samples/s")

        # A/B runs alternate `--repeat` times: the ratio of each pair is measured back to back.
        pairs = []
        for i in range(args.repeat):
            a = run_child("train", memory, root / f"memory-{i}", args.threads)["samples_per_s"]
            b = run_child("train", shards, root / f"shards-{i}", args.threads)["samples_per_s"]
            pairs.append((a, b))
        print(
            f"2. tiny recipe, {args.steps} steps per stage, from memory vs from shards (samples/s): "
            + ", ".join(f"{a:.0f} vs {b:.0f}" for a, b in pairs)
            + f"; median ratio {statistics.median(b / a for a, b in pairs):.2f}x (target >= 0.90)"
        )

        print("3. peak RSS of a momo-tiny MIM run from shards (batch 64, 2 workers, 8-shard windows):")
        for size in (int(n) for n in args.sizes.split(",")):
            data = image_shards(root / f"images-{size}", size)
            rss = run_child("train", rss_recipe(data, args.steps * 2), root / f"rss-{size}", args.threads)
            print(
                f"   {size:>7} images: main process {rss['rss_main_mib']:.0f} MiB, "
                f"each worker <= {rss['rss_workers_mib']:.0f} MiB"
            )

        stage = tiny_recipe(root / "data", args.steps, stages=["images_text"])
        pairs = []
        for i in range(args.repeat):
            a = run_child("train", stage, root / f"single-{i}", threads=2)["samples_per_s"]
            pairs.append((a, ddp_run(stage, root / f"ddp-{i}")))
        print(
            "4. images+text stage, 1 process × 2 threads vs 2 DDP processes × 1 thread (samples/s): "
            + ", ".join(f"{a:.0f} vs {b:.0f}" for a, b in pairs)
            + f"; median ratio {statistics.median(b / a for a, b in pairs):.2f}x (target >= 0.80)"
        )
    print(f"load average at end {load()}")


if __name__ == "__main__":
    main()
