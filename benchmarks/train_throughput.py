"""Training throughput per objective, and achieved FLOP/s against a matmul peak measured in the
same run; with --pipeline, the data pipeline.

    .venv/bin/python benchmarks/train_throughput.py [--presets momo-tiny,momo-small] [--steps 5]
    .venv/bin/python benchmarks/train_throughput.py --precision     # + bf16/fp32 per objective
    .venv/bin/python benchmarks/train_throughput.py --pipeline      # the data-pipeline run

For each preset and objective: one optimizer step (forward + backward + AdamW) on synthetic
inputs of the preset's shapes, timed over `--steps` repetitions after a warm-up. FLOPs per step
are counted by `torch.utils.flop_counter` (matmuls/convs/attention), so `achieved / peak` says how
much of the machine the small model's step uses. `--precision` times each step in fp32 and under
CPU bf16 autocast, alternately, in CPU seconds, and prints the ratio of the fastest of each (what
`training.engine.CPU_BF16_FASTER` is chosen from; run it with `--threads 1`). `--pipeline` runs
`benchmarks/data_pipeline.py`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch

from momo.config import get_preset
from momo.model import MoMoEncoder
from training.losses import Batch, TokenInfo, build_objective
from training.losses.base import Objective

OBJECTIVES = ("mim", "mlm", "itc", "itm", "mmm", "vqa")


def matmul_peak(size: int = 1024, repeats: int = 20) -> float:
    """fp32 FLOP/s of a square matmul on this machine, best of `repeats`."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def synthetic_batch(objective: str, config, batch: int, text_len: int = 20) -> Batch:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, config.image_size, config.image_size, generator=g)
    ids = torch.randint(5, config.vocab_size, (batch, text_len), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    mask = torch.ones_like(ids)
    if objective == "mim":
        return Batch(pixels=pixels)
    if objective == "mlm":
        return Batch(input_ids=ids, attention_mask=mask)
    labels = torch.randint(0, 15, (batch,), generator=g)
    return Batch(pixels=pixels, input_ids=ids, attention_mask=mask, labels=labels)


def make_step(preset: str, objective: str, batch: int) -> Callable[[bool], None]:
    """One optimizer step (forward + backward + AdamW) of one objective on synthetic inputs;
    `step(bf16)` runs it under CPU bf16 autocast when True."""
    config = get_preset(preset)
    tokens = TokenInfo(mask_id=4, pad_id=0, vocab_size=config.vocab_size, special_ids={0, 1, 2, 3, 4})
    torch.manual_seed(0)
    encoder = MoMoEncoder(config)
    loss_module: Objective = build_objective(objective, config, tokens, answers=[str(i) for i in range(15)])
    params = list(encoder.parameters()) + list(loss_module.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    data = synthetic_batch(objective, config, batch)

    def step(bf16: bool) -> None:
        optimizer.zero_grad(set_to_none=True)
        context: dict = {}
        if objective == "itm":  # ITM mines negatives from ITC similarities; give it some
            context["itc_similarity"] = torch.randn(batch, batch)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses = loss_module(encoder, data, torch.Generator().manual_seed(1), context)
        sum(losses.values()).backward()
        optimizer.step()

    return step


def measure(preset: str, objective: str, batch: int, steps: int) -> tuple[float, float]:
    """(samples/s, FLOP/s) for one objective in fp32."""
    step = make_step(preset, objective, batch)
    step(False)  # warm-up
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step(False)
    flops = float(counter.get_total_flops())
    start = time.perf_counter()
    for _ in range(steps):
        step(False)
    seconds = (time.perf_counter() - start) / steps
    return batch / seconds, flops / seconds


def bf16_speedup(preset: str, objective: str, batch: int, rounds: int) -> float:
    """fp32 step time / bf16 step time in CPU seconds of this process (not wall time, which other
    work on a shared machine stretches), the least of `rounds` alternating steps each."""
    step = make_step(preset, objective, batch)
    best = {False: float("inf"), True: float("inf")}
    for bf16 in (False, True):
        step(bf16)  # warm-up (oneDNN picks its bf16 kernels on the first call)
    for _ in range(rounds):
        for bf16 in (False, True):
            start = time.process_time()
            step(bf16)
            best[bf16] = min(best[bf16], time.process_time() - start)
    return best[False] / best[True]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", default="momo-tiny,momo-small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--precision", action="store_true", help="also time each step under CPU bf16 autocast (bf16/fp32)"
    )
    parser.add_argument("--pipeline", action="store_true", help="run the data-pipeline benchmark instead")
    if "--pipeline" in sys.argv[1:]:  # its own options (--steps, --sizes, --threads)
        from data_pipeline import main as pipeline_main

        pipeline_main([a for a in sys.argv[1:] if a != "--pipeline"])
        return
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_peak()
    print(f"threads {args.threads}; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s (1024x1024, best of 20)")
    extra = f" {'bf16/fp32':>9}" if args.precision else ""
    print(f"{'preset':<11} {'objective':<9} {'samples/s':>10} {'GFLOP/s':>9} {'of peak':>8}{extra}")
    for preset in args.presets.split(","):
        ratios = []
        for objective in OBJECTIVES:
            samples, flops = measure(preset, objective, args.batch, args.steps)
            line = f"{preset:<11} {objective:<9} {samples:>10.1f} {flops / 1e9:>9.1f} {flops / peak:>8.1%}"
            if args.precision:
                ratios.append(bf16_speedup(preset, objective, args.batch, args.steps))
                line += f" {ratios[-1]:>8.2f}x"
            print(line, flush=True)
        if ratios:
            mean = sum(ratios) / len(ratios)
            print(f"{preset:<11} bf16/fp32 mean over objectives: {mean:.2f}x", flush=True)


if __name__ == "__main__":
    main()
