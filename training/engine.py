"""The stage engine: set-up (`build_*`) kept apart from the loop (`train_step`).

Simultaneous mode (the method): every optimizer step takes one batch from *each* stream of the
stage, runs that stream's objectives, and calls backward per stream (so only one stream's
activations are alive at a time); gradients accumulate and one `optimizer.step()` follows.
Alternating mode (the ablation baseline): one stream per step, round-robin.

A stream's global batch is split into micro-batches (`training.stream_loader`): over ranks (torch
DDP, `training.distributed`) and, within a rank, over gradient-accumulation passes. Each pass's
loss is scaled by 1/accumulation and DDP averages over ranks, so the update is the mean over the
step's micro-batches whatever the split. Masking randomness is a function of the micro-batch's
global index, not of the rank that runs it, so 1 process × 2 accumulation passes and 2 processes ×
1 pass give the same parameters.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from momo.config import MoMoConfig
from momo.heads import HeadSpec
from momo.model import MoMoEncoder
from momo.tokenizer import MoMoTokenizer
from training.distributed import DistInfo, Replicated
from training.losses import Batch, Objective, TokenInfo, build_objective, weighted_sum
from training.losses.contrastive import ITCLoss
from training.recipe import Precision, StageSpec, StreamSpec
from training.stream_loader import StreamLoader
from training.streams import Collate, StreamSource, build_stream_data

KEPT_HEADS = ("itm", "vqa", "mlm")  # objectives whose heads go into the artifact


class NonFiniteLossError(RuntimeError):
    """Training stopped because a loss became NaN or infinite."""


class HandOverError(RuntimeError):
    """A stage's starting weights did not match the expected set of new/dropped parameters."""


# --- set-up --------------------------------------------------------------------------------------
class PretrainModule(nn.Module):
    """The encoder plus this stage's objectives (each owning its head)."""

    def __init__(self, encoder: MoMoEncoder, objectives: dict[str, Objective]):
        super().__init__()
        self.encoder = encoder
        self.objectives = nn.ModuleDict(objectives)

    def forward(
        self, objectives: list[str], batch: Batch, generator: torch.Generator, context: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """One stream's pass: the named objectives on `batch` -> their named losses."""
        losses: dict[str, torch.Tensor] = {}
        for objective in objectives:
            losses.update(self.objectives[objective](self.encoder, batch, generator, context))
        return losses


def token_info(tokenizer: MoMoTokenizer) -> TokenInfo:
    return TokenInfo(tokenizer.mask_id, tokenizer.pad_id, tokenizer.vocab_size, tokenizer.special_ids)


def build_module(
    config: MoMoConfig, stage: StageSpec, tokens: TokenInfo, answers: list[str] | None
) -> PretrainModule:
    objectives = {
        name: build_objective(name, config, tokens, answers=answers, **stage.objective_options.get(name, {}))
        for name in stage.objectives
    }
    return PretrainModule(MoMoEncoder(config), objectives)


def hand_over(module: PretrainModule, previous: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Start `module` from the previous stage's weights (non-strict) and assert the exact key sets:
    missing = parameters of objectives new in this stage; unexpected = those of dropped objectives."""
    own = set(module.state_dict())
    prev_objectives = {k.split(".")[1] for k in previous if k.startswith("objectives.")}
    new_objectives = set(module.objectives) - prev_objectives
    dropped = prev_objectives - set(module.objectives)
    expected_missing = {k for k in own if k.startswith("objectives.") and k.split(".")[1] in new_objectives}
    expected_unexpected = {k for k in previous if k.startswith("objectives.") and k.split(".")[1] in dropped}
    result = module.load_state_dict(previous, strict=False)
    missing, unexpected = set(result.missing_keys), set(result.unexpected_keys)
    if missing != expected_missing or unexpected != expected_unexpected:
        raise HandOverError(
            "stage hand-over mismatch: "
            f"missing {sorted(missing ^ expected_missing)[:8]}, "
            f"unexpected {sorted(unexpected ^ expected_unexpected)[:8]}"
        )
    return sorted(missing), sorted(unexpected)


def exempt_from_decay(name: str, param: torch.Tensor) -> bool:
    """No weight decay on biases, norms, embeddings, positions, tokens and temperatures."""
    return param.ndim < 2 or any(s in name for s in ("embed", "pos", "token", "logit_scale"))


def build_optimizer(module: nn.Module, stage: StageSpec) -> torch.optim.AdamW:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if exempt_from_decay(name, param) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": stage.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=stage.lr, betas=(0.9, 0.98), eps=1e-6)


def warmup_cosine_factor(total: int, warmup: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier per step: linear warm-up over `warmup` steps, then cosine decay to `min_ratio`."""
    warmup = min(warmup, max(total - 1, 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return min_ratio + (1 - min_ratio) * cosine

    return factor


def warmup_cosine(stage: StageSpec) -> Callable[[int], float]:
    return warmup_cosine_factor(stage.steps, stage.warmup_steps, stage.min_lr_ratio)


def resolve_device(device: str) -> torch.device:
    """ "auto" -> CUDA when available, else CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_paths(data_dir: Path, paths: list[str]) -> list[Path]:
    return [Path(p) if Path(p).is_absolute() else data_dir / p for p in paths]


def build_stream(
    spec: StreamSpec, data_dir: Path, config: MoMoConfig, tokenizer: MoMoTokenizer, answers: list[str] | None
) -> StreamSource:
    """The stream's source: decoded into RAM now (`source: memory`) or read from shards on demand."""
    paths = resolve_paths(data_dir, spec.paths)
    label_names = answers if spec.kind == "vqa" else None
    if spec.source == "memory":
        return build_stream_data(
            spec.kind, paths, config, tokenizer, limit=spec.limit, label_names=label_names
        )
    from training.data.shards import ShardSet
    from training.shard_streams import ShardStream

    return ShardStream(
        spec.kind,
        ShardSet.open(paths),
        config,
        tokenizer,
        limit=spec.limit,
        label_names=label_names,
        on_error=spec.on_error,
    )


def build_loader(
    spec: StreamSpec, source: StreamSource, config: MoMoConfig, seed: int, info: DistInfo
) -> StreamLoader:
    return StreamLoader(
        spec.name,
        source,
        Collate(spec.kind, config, source.pad_id),
        spec.batch_size,
        seed,
        rank=info.rank,
        world=info.world,
        micro_batch_size=spec.micro_batch_size,
        workers=spec.workers,
        shuffle_shards=spec.shuffle_shards,
    )


def step_generator(seed: int, micro_batch: int, global_step: int, stream_index: int) -> torch.Generator:
    """Masking / negative sampling randomness as a pure function of (seed, micro-batch, step,
    stream): nothing to checkpoint, a resumed step draws exactly what the uninterrupted one drew,
    and a micro-batch draws the same whichever rank runs it."""
    state = np.random.SeedSequence([seed, micro_batch, global_step, stream_index]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


# bf16 autocast on CPU where it was measured faster than fp32, per preset and objective: the
# bf16/fp32 speed of one training step (forward + backward + AdamW), CPU seconds, 1 thread,
# `benchmarks/train_throughput.py --precision --threads 1 --steps 5` (base: --batch 8 --steps 3),
# on this project's 2-core Xeon with AMX-bf16:
#               mim    mlm    itc    itm    mmm    vqa
#   momo-tiny   0.83   1.16   1.08   1.46   1.31   1.33
#   momo-small  0.85   1.26   1.33   1.65   1.49   1.48
#   momo-base   1.61   1.27   1.99   2.18   1.98   1.94
# MIM of the small presets (few visible patches, small matmuls) is slower in bf16; all else faster.
# Presets not listed (momo-test, momo-large) were not measured and stay fp32 on CPU.
CPU_BF16_FASTER: dict[str, frozenset[str]] = {
    "momo-tiny": frozenset({"mlm", "itc", "itm", "mmm", "vqa"}),
    "momo-small": frozenset({"mlm", "itc", "itm", "mmm", "vqa"}),
    "momo-base": frozenset({"mim", "mlm", "itc", "itm", "mmm", "vqa"}),
}


def use_bf16(precision: Precision, preset: str, device: torch.device, objectives: list[str]) -> bool:
    """Whether a pass of these objectives runs under bf16 autocast: always on CUDA with `auto`, on
    CPU where every objective of the pass was measured faster in bf16 for the preset."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return True
    faster = CPU_BF16_FASTER.get(preset, frozenset())
    return device.type == "cpu" and all(o in faster for o in objectives)


# --- the loop ------------------------------------------------------------------------------------
@dataclass
class StepState:
    global_step: int
    seed: int


def _autocast(device: torch.device, bf16: bool) -> Any:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def active_streams(stage: StageSpec, step: int) -> list[tuple[int, StreamSpec]]:
    """The streams one step touches: all of them (simultaneous) or one, round-robin (alternating)."""
    indexed = list(enumerate(stage.streams))
    if stage.mode == "simultaneous":
        return indexed
    return [indexed[step % len(indexed)]]


def train_step(
    model: Replicated,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    stage: StageSpec,
    loaders: dict[str, StreamLoader],
    step: int,
    state: StepState,
    device: torch.device,
    precision: Precision = "fp32",
    preset: str = "",
) -> dict[str, float]:
    """One optimizer step; returns named losses (per stream, mean over this rank's micro-batches),
    accuracies, skipped samples, grad norm and lr."""
    model.module.train()
    optimizer.zero_grad(set_to_none=True)
    streams = active_streams(stage, step)
    total = sum(loaders[spec.name].accumulation for _, spec in streams)
    logs: dict[str, float] = {}
    not_finite: list[str] = []
    done = 0
    for index, spec in streams:
        loader = loaders[spec.name]
        bf16 = use_bf16(precision, preset, device, spec.objectives)
        for micro, batch in loader.next_step():  # one stream's micro-batches at a time
            generator = step_generator(state.seed, micro, state.global_step, index)
            context: dict[str, Any] = {}
            done += 1
            # Backward per pass: this pass's graph is freed before the next one runs. Under DDP
            # only the step's last backward reduces (the sum of all passes' gradients).
            with model.sync(last=done == total):
                with _autocast(device, bf16):
                    losses = model(spec.objectives, batch.to(device), generator, context)
                (weighted_sum(losses, stage.weights) / loader.accumulation).backward()
            for name, value in losses.items():
                key, number = f"{spec.name}/{name}", float(value.detach())
                logs[key] = logs.get(key, 0.0) + number / loader.accumulation
                if not math.isfinite(number):
                    not_finite.append(f"loss {name!r} of stream {spec.name!r} is {number}")
            for name, value in context.items():
                if name.endswith("accuracy"):
                    key = f"{spec.name}/{name}"
                    logs[key] = logs.get(key, 0.0) + float(value) / loader.accumulation
    for name, loader in loaders.items():
        if loader.skipped:
            logs[f"{name}/skipped"] = float(loader.skipped)
    grad_norm = model.clip_grad_norm(stage.grad_clip)
    # Every rank holds the same reduced gradients, so every rank stops here together (a rank that
    # raised at its own loss would leave the others waiting in the all-reduce).
    if not_finite or not torch.isfinite(grad_norm):
        problem = "; ".join(not_finite) or f"the gradient norm is {float(grad_norm)} (a loss on another rank)"
        raise NonFiniteLossError(
            f"stage {stage.name!r} step {step} (global {state.global_step}): {problem}; stopping. "
            f"Lower the learning rate ({stage.lr}) or check the data; resume from the last checkpoint "
            "with --resume."
        )
    optimizer.step()
    scheduler.step()
    logs["grad_norm"] = float(grad_norm)
    logs["lr"] = float(scheduler.get_last_lr()[0])
    return logs


# --- run management ------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a half checkpoint under the real name


def snapshot_heads(module: PretrainModule, state: dict[str, torch.Tensor], kept: dict[str, Any]) -> None:
    """Remember the heads the artifact keeps (ITM, VQA, the MLM token head) and the contrastive
    temperature, read from `state` (the full module state: under FSDP the module holds only shards)."""
    for name in KEPT_HEADS:
        objective = module.objectives[name] if name in module.objectives else None  # noqa: SIM401
        if getattr(objective, "head", None) is None:
            continue
        prefix = f"objectives.{name}.head."
        spec = getattr(objective, "spec", None)
        kept[name] = {
            "state": {k[len(prefix) :]: v.clone() for k, v in state.items() if k.startswith(prefix)},
            "spec": spec.to_dict() if isinstance(spec, HeadSpec) else None,
        }
    if "itc" in module.objectives:
        itc = module.objectives["itc"]
        assert isinstance(itc, ITCLoss)
        kept["temperature"] = itc.temperature_of(state["objectives.itc.logit_scale"])
