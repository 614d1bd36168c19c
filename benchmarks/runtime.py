"""Throughput of the inference runtimes: items/s for image and text encoding.

    .venv/bin/python benchmarks/runtime.py                 # active model, else a random momo-tiny
    .venv/bin/python benchmarks/runtime.py --model momo-tiny:v1 --threads 2 --batches 1 8 32 64

Measured in one process on the same inputs: ONNX Runtime (fp32; add `--int8` for the quantised
graphs), TorchScript and eager torch, all with the same intra-op thread count. Prints a table with the
ratios ONNX/eager and TorchScript/eager (> 1 means faster than eager). Each cell is the median of
`--repeats` timed runs of at least `--min-seconds` each, after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from momo.runtime import Runtime, load_runtime  # noqa: E402
from momo.store import DEFAULT_STORE, ModelStore, StoreError  # noqa: E402

CORPUS = [
    "a red circle to the left of a blue square",
    "a small green triangle above a large yellow circle",
    "a photo of a sneaker",
    "how many shapes are there",
    "an emoji of a grinning face",
    "the quick brown fox jumps over the lazy dog",
] * 8


def random_artifact(preset: str, root: Path) -> tuple[ModelStore, str]:
    """Register a random-weight model of `preset` in a temporary store."""
    import torch

    from momo.artifact import Manifest, save_artifact
    from momo.config import get_preset
    from momo.model import MoMoModel
    from momo.tokenizer import MoMoTokenizer

    torch.manual_seed(0)
    config = get_preset(preset)
    model = MoMoModel(config).eval()
    tokenizer = MoMoTokenizer.train(CORPUS, vocab_size=min(config.vocab_size, 512), min_frequency=1)
    store = ModelStore(root / "model_store")

    def write(directory: Path, version: str) -> None:
        save_artifact(
            directory, model, tokenizer, Manifest(name=preset, version=version, recipe={"random": True})
        )

    info = store.register(preset, write)
    return store, info.reference


def measure(
    fns: Mapping[str, Callable[[], Any]], items: int, min_seconds: float, repeats: int
) -> dict[str, float]:
    """Median items/s per runtime. The runtimes take turns (round-robin, `repeats` rounds of at least
    `min_seconds` each) so that load from other processes on a shared machine hits all of them alike."""
    for fn in fns.values():  # warm-up for this shape
        fn()
        fn()
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            count, start = 0, time.perf_counter()
            while True:
                fn()
                count += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
            rates[name].append(count * items / elapsed)
    return {name: statistics.median(values) for name, values in rates.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="store reference (default: the active model)")
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE)
    parser.add_argument("--preset", default="momo-tiny", help="random model preset when the store has none")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--text-length", type=int, default=16, help="tokens per text (capped at max_text_len)"
    )
    parser.add_argument("--min-seconds", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--int8", action="store_true", help="also measure the int8 ONNX graphs")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        store, reference = ModelStore(args.store), args.model
        try:
            store.locate(reference)
        except StoreError:
            if args.model is not None:
                raise
            store, reference = random_artifact(args.preset, Path(tmp))
            print(f"no active model in {args.store}: using a random {args.preset}")
        cache = Path(tmp) / "cache"
        common: dict[str, Any] = {"store": store, "device": args.device, "threads": args.threads}
        runtimes: dict[str, Runtime] = {
            "onnx": load_runtime(reference, "onnx", cache_dir=cache, **common),
            "torchscript": load_runtime(reference, "torch", torchscript=True, cache_dir=cache, **common),
            "eager": load_runtime(reference, "torch", **common),
        }
        if args.int8:
            runtimes["onnx-int8"] = load_runtime(reference, "onnx-int8", cache_dir=cache, **common)
        artifact = runtimes["eager"].artifact
        config = artifact.config
        length = min(args.text_length, config.max_text_len)
        print(
            f"model {artifact.reference} ({config.name}: {config.num_layers} layers, width {config.width}, "
            f"{config.image_size}px/{config.patch_size}, text {length} tokens), threads {args.threads}, "
            f"device {runtimes['eager'].device}, torch {torch.__version__}, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        rng = np.random.default_rng(0)
        results: dict[str, dict[int, dict[str, float]]] = {"image": {}, "text": {}}
        for batch in args.batches:
            pixels = rng.standard_normal((batch, config.num_channels, config.image_size, config.image_size))
            pixels = pixels.astype(np.float32)
            ids = rng.integers(5, config.vocab_size, size=(batch, length), dtype=np.int64)
            mask = np.ones_like(ids)
            image_fns = {n: partial(r.encode_images, pixels) for n, r in runtimes.items()}
            text_fns = {n: partial(r.encode_texts, ids, mask) for n, r in runtimes.items()}
            results["image"][batch] = measure(image_fns, batch, args.min_seconds, args.repeats)
            results["text"][batch] = measure(text_fns, batch, args.min_seconds, args.repeats)
        names = list(runtimes)
        columns = " | ".join(f"{n} items/s" for n in names)
        header = f"| modality | batch | {columns} | ONNX/eager | TorchScript/eager |"
        print()
        print(header)
        print("|" + "---|" * (len(names) + 4))
        for modality, rows in results.items():
            for batch, figures in rows.items():
                cells = " | ".join(f"{figures[n]:,.0f}" for n in names)
                onnx_ratio = figures["onnx"] / figures["eager"]
                ts_ratio = figures["torchscript"] / figures["eager"]
                print(f"| {modality} | {batch} | {cells} | {onnx_ratio:.2f} | {ts_ratio:.2f} |")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {"model": artifact.reference, "threads": args.threads, "results": results}, indent=2
                )
            )
        for runtime in runtimes.values():
            runtime.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
