"""The stage engine: set-up (`build_*`) kept apart from the loop (`train_step`, `evaluate`).

Simultaneous mode (the method): every optimizer step takes one batch from *each* stream of the
stage, runs that stream's objectives, and calls backward per stream (so only one stream's
activations are alive at a time); gradients accumulate and one `optimizer.step()` follows.
Alternating mode (the ablation baseline): one stream per step, round-robin.

Data parallelism: under `torchrun` every rank takes its share of each global batch and the
gradients are all-reduced (gloo on CPU, NCCL on GPU) before the step — DDP's arithmetic, done by
hand because one step runs several forward/backward passes through different submodules.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from momo.config import MoMoConfig
from momo.heads import HeadSpec
from momo.model import MoMoEncoder
from momo.tokenizer import MoMoTokenizer
from training.losses import Objective, TokenInfo, build_objective, weighted_sum
from training.losses.contrastive import ITCLoss
from training.recipe import StageSpec, StreamSpec
from training.streams import StreamData, StreamLoader, build_stream_data

KEPT_HEADS = ("itm", "vqa")  # objectives whose heads go into the artifact


class NonFiniteLossError(RuntimeError):
    """Training stopped because a loss became NaN or infinite."""


class HandOverError(RuntimeError):
    """A stage's starting weights did not match the expected set of new/dropped parameters."""


# --- distributed ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_gradients(parameters: list[nn.Parameter], world: int) -> None:
    """Average gradients over ranks in one flat buffer (missing grads count as zero)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in parameters:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


# --- set-up --------------------------------------------------------------------------------------
class PretrainModule(nn.Module):
    """The encoder plus this stage's objectives (each owning its head)."""

    def __init__(self, encoder: MoMoEncoder, objectives: dict[str, Objective]):
        super().__init__()
        self.encoder = encoder
        self.objectives = nn.ModuleDict(objectives)


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
) -> StreamData:
    return build_stream_data(
        spec.kind,
        resolve_paths(data_dir, spec.paths),
        config,
        tokenizer,
        limit=spec.limit,
        label_names=answers if spec.kind == "vqa" else None,
    )


def step_generator(seed: int, rank: int, global_step: int, stream_index: int) -> torch.Generator:
    """Masking / negative sampling randomness as a pure function of (seed, rank, step, stream):
    nothing to checkpoint, and a resumed step draws exactly what the uninterrupted one drew."""
    state = np.random.SeedSequence([seed, rank, global_step, stream_index]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


# --- the loop ------------------------------------------------------------------------------------
@dataclass
class StepState:
    global_step: int
    seed: int
    dist: DistInfo = field(default_factory=DistInfo)


def _autocast(device: torch.device) -> Any:
    # bf16 autocast on CUDA; plain fp32 on CPU (CPU bf16 is slower than fp32 on most cores).
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def active_streams(stage: StageSpec, step: int) -> list[tuple[int, StreamSpec]]:
    """The streams one step touches: all of them (simultaneous) or one, round-robin (alternating)."""
    indexed = list(enumerate(stage.streams))
    if stage.mode == "simultaneous":
        return indexed
    return [indexed[step % len(indexed)]]


def train_step(
    module: PretrainModule,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    stage: StageSpec,
    loaders: dict[str, StreamLoader],
    config: MoMoConfig,
    step: int,
    state: StepState,
    device: torch.device,
) -> dict[str, float]:
    """One optimizer step; returns named losses (per stream), accuracies, grad norm and lr."""
    module.train()
    optimizer.zero_grad(set_to_none=True)
    logs: dict[str, float] = {}
    for index, spec in active_streams(stage, step):
        batch = loaders[spec.name].next_batch(config).to(device)
        generator = step_generator(state.seed, state.dist.rank, state.global_step, index)
        context: dict[str, Any] = {}
        losses: dict[str, torch.Tensor] = {}
        with _autocast(device):
            for objective in spec.objectives:
                losses.update(module.objectives[objective](module.encoder, batch, generator, context))
        for name, value in losses.items():
            if not torch.isfinite(value):
                raise NonFiniteLossError(
                    f"stage {stage.name!r} step {step} (global {state.global_step}): loss {name!r} of stream "
                    f"{spec.name!r} is {value.item()}; stopping. Lower the learning rate "
                    f"({stage.lr}) or check the data; resume from the last checkpoint with --resume."
                )
        # Backward per stream: this stream's graph is freed before the next stream runs.
        weighted_sum(losses, stage.weights).backward()
        for name, value in losses.items():
            logs[f"{spec.name}/{name}"] = float(value.detach())
        for name, value in context.items():
            if name.endswith("accuracy"):
                logs[f"{spec.name}/{name}"] = float(value)
    params = [p for p in module.parameters() if p.requires_grad]
    if state.dist.world > 1:
        all_reduce_gradients(params, state.dist.world)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, stage.grad_clip)
    optimizer.step()
    scheduler.step()
    logs["grad_norm"] = float(grad_norm)
    logs["lr"] = float(scheduler.get_last_lr()[0])
    return logs


@torch.no_grad()
def evaluate(
    module: PretrainModule,
    stage: StageSpec,
    loaders: dict[str, StreamLoader],
    config: MoMoConfig,
    device: torch.device,
    batches: int = 4,
    seed: int = 1234,
) -> dict[str, float]:
    """Mean of every named loss over `batches` batches of each (validation) loader, no gradients."""
    module.eval()
    sums: dict[str, float] = {}
    for index, spec in enumerate(stage.streams):
        loader = loaders.get(spec.name)
        if loader is None:
            continue
        for b in range(batches):
            batch = loader.next_batch(config).to(device)
            context: dict[str, Any] = {}
            generator = step_generator(seed, 0, b, index)
            with _autocast(device):
                for objective in spec.objectives:
                    for name, value in module.objectives[objective](
                        module.encoder, batch, generator, context
                    ).items():
                        key = f"val/{spec.name}/{name}"
                        sums[key] = sums.get(key, 0.0) + float(value) / batches
    module.train()
    return sums


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


def snapshot_heads(module: PretrainModule, kept: dict[str, Any]) -> None:
    """Remember the heads the artifact keeps (ITM, VQA) and the contrastive temperature."""
    for name in KEPT_HEADS:
        objective = module.objectives[name] if name in module.objectives else None  # noqa: SIM401
        head = getattr(objective, "head", None)
        if head is not None:
            spec = getattr(objective, "spec", None)
            kept[name] = {
                "state": {k: v.detach().clone().cpu() for k, v in head.state_dict().items()},
                "spec": spec.to_dict() if isinstance(spec, HeadSpec) else None,
            }
    if "itc" in module.objectives:
        itc = module.objectives["itc"]
        assert isinstance(itc, ITCLoss)
        kept["temperature"] = itc.temperature


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(path: Path, global_step: int) -> None:
    """On resume, forget log lines written after the checkpoint (they will be written again)."""
    rows = [r for r in read_metrics(path) if r.get("global_step", 0) <= global_step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
