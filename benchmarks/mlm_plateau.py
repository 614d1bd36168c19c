"""Why momo-tiny:v1's MLM sat at the unigram loss, measured: text-only MLM on the v2 corpus under v1's
settings and under v2's, each arm from the same initial weights, the held-out loss every N steps.

    .venv/bin/python benchmarks/mlm_plateau.py [--steps 800] [--every 100] \
        [--plot docs/pretraining/mlm_plateau.png]

Arms (momo-tiny, AdamW, warm-up + cosine, seed 0):

- ``v1``: v1's images+text stage, 64 texts per step, 15 % masked, lr 1e-3, 50 warm-up steps;
- ``v1-low-lr``: the same at lr 3e-4 (is the learning rate the problem?);
- ``v2``: the v2 recipe, 128 texts per step, 30 % masked, lr 1e-3, 200 warm-up steps.

The held-out loss is always measured the same way: 15 % of the tokens of `--eval-lines` lines of
``text/test.txt`` (fixed masks), mean cross-entropy in nats, beside the unigram loss of the train
corpus. Predictions per step (masked tokens) are printed too: they are what differs most.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from momo.config import get_preset
from momo.model import MoMoEncoder
from momo.tokenizer import MoMoTokenizer
from training.data.formats import read_text_lines
from training.engine import warmup_cosine_factor
from training.losses import TokenInfo, build_objective
from training.losses.mlm import MLMLoss
from training.masking import mask_tokens
from training.streams import build_stream_data, make_batch


@dataclass(frozen=True)
class Arm:
    name: str
    batch_size: int
    probability: float
    lr: float
    warmup: int


ARMS = (
    Arm("v1", 64, 0.15, 1e-3, 50),
    Arm("v1-low-lr", 64, 0.15, 3e-4, 50),
    Arm("v2", 128, 0.30, 1e-3, 200),
)


def held_out(encoder: MoMoEncoder, mlm: MLMLoss, batches: Sequence[tuple[torch.Tensor, ...]]) -> float:
    total, count = 0.0, 0
    encoder.eval()
    with torch.no_grad():
        for masked, labels, mask in batches:
            hidden = encoder.encode_text(masked, mask)  # (B, L, D)
            selected = labels != -100
            logits = mlm.head(hidden[selected], encoder.text_embed.token.weight)  # (M, V)
            total += float(F.cross_entropy(logits.float(), labels[selected], reduction="sum"))
            count += int(selected.sum())
    encoder.train()
    return total / count


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--tokenizer", type=Path, default=Path("training/recipes/momo-tiny-tokenizer.json"))
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--eval-lines", type=int, default=1000)
    parser.add_argument("--train-lines", type=int, default=100_000)
    parser.add_argument("--arms", default=",".join(a.name for a in ARMS))
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    config = get_preset("momo-tiny")
    tokenizer = MoMoTokenizer.load(args.tokenizer)
    tokens = TokenInfo(tokenizer.mask_id, tokenizer.pad_id, tokenizer.vocab_size, tokenizer.special_ids)
    train_file = args.data_dir / "text" / "train.txt"
    data = build_stream_data("text", [train_file], config, tokenizer, limit=args.train_lines)
    test_lines = read_text_lines(args.data_dir / "text" / "test.txt")
    test_lines = [
        test_lines[i] for i in np.random.default_rng(0).permutation(len(test_lines))[: args.eval_lines]
    ]
    generator = torch.Generator().manual_seed(0)
    eval_batches = []
    for start in range(0, len(test_lines), 128):
        text = tokenizer.encode_batch(test_lines[start : start + 128], config.max_text_len)
        ids, mask = torch.from_numpy(text.input_ids), torch.from_numpy(text.attention_mask)
        masked, labels = mask_tokens(
            ids, mask, mask_id=tokens.mask_id, vocab_size=tokens.vocab_size,
            special_ids=tokens.special_ids, generator=generator, probability=0.15,
        )  # fmt: skip
        eval_batches.append((masked, labels, mask))
    assert data.tokens is not None and data.lengths is not None
    counts = Counter(data.tokens[np.arange(data.tokens.shape[1])[None, :] < data.lengths[:, None]].tolist())
    denominator = sum(counts.values()) + tokenizer.vocab_size
    targets = torch.cat([labels[labels != -100] for _, labels, _ in eval_batches]).tolist()
    unigram = float(np.mean([-math.log((counts[t] + 1) / denominator) for t in targets]))
    print(f"corpus {len(data)} train lines, {len(test_lines)} held-out lines; unigram loss {unigram:.3f}")

    results: dict[str, dict[str, list[float]]] = {}
    for arm in (a for a in ARMS if a.name in args.arms.split(",")):
        torch.manual_seed(0)
        encoder = MoMoEncoder(config)
        mlm = build_objective("mlm", config, tokens, probability=arm.probability)
        assert isinstance(mlm, MLMLoss)
        params = [*encoder.parameters(), *mlm.parameters()]
        optimizer = torch.optim.AdamW(params, lr=arm.lr, weight_decay=0.05, betas=(0.9, 0.98))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine_factor(args.steps, arm.warmup, 0.1)
        )
        order = np.random.default_rng(1)
        curve: dict[str, list[float]] = {"step": [0.0], "held_out": [held_out(encoder, mlm, eval_batches)]}
        predictions = 0
        started = time.perf_counter()
        step_generator = torch.Generator().manual_seed(2)
        for step in range(1, args.steps + 1):
            batch = make_batch(data, order.integers(0, len(data), arm.batch_size), config)
            masked_ids, labels = mlm._mask(batch, step_generator)
            assert batch.attention_mask is not None
            hidden = encoder.encode_text(masked_ids, batch.attention_mask)
            loss = mlm._token_loss(hidden, labels, encoder)
            predictions += int((labels != -100).sum())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            if step % args.every == 0:
                curve["step"].append(float(step))
                curve["held_out"].append(held_out(encoder, mlm, eval_batches))
                print(
                    f"{arm.name:>10} step {step:5d}: held-out MLM {curve['held_out'][-1]:.3f} "
                    f"(train {float(loss.detach()):.3f}, {predictions / step:.0f} predictions/step, "
                    f"{time.perf_counter() - started:.0f}s)",
                    flush=True,
                )
        results[arm.name] = curve

    print("\n| arm | texts/step | masked | lr | predictions/step | held-out MLM at the end | ÷ unigram |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for arm in ARMS:
        if arm.name in results:
            final = results[arm.name]["held_out"][-1]
            per_step = arm.batch_size * arm.probability * float(np.mean(data.lengths - 2))
            print(
                f"| {arm.name} | {arm.batch_size} | {arm.probability:.0%} | {arm.lr:g} | {per_step:.0f} | "
                f"{final:.3f} | {final / unigram:.2f} |"
            )
    if args.json:
        args.json.write_text(json.dumps({"unigram": unigram, "arms": results}, indent=1) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for name, curve in results.items():
            ax.plot(curve["step"], curve["held_out"], marker="o", markersize=3, label=name)
        ax.axhline(unigram, color="gray", linestyle="--", label=f"unigram {unigram:.2f}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("held-out MLM loss (nats, 15 % masked)")
        ax.set_title("momo-tiny text-only MLM: v1 settings vs v2")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
