"""Data parallelism: the process group, and the pretraining module as torch DDP replicates it.

One entry point for every scale: a plain process runs alone; under ``torchrun`` (WORLD_SIZE > 1) it
joins a process group, gloo on CPU and NCCL on GPU, and wraps the module in
`torch.nn.parallel.DistributedDataParallel`, which all-reduces gradients in buckets that overlap
with the backward pass.

A step runs several forward/backward passes — one per stream and micro-batch (see
`training.engine.train_step`) — so every pass but the step's last runs under ``no_sync()``
(gradients accumulate locally) and the last one reduces the sum in one go.

``find_unused_parameters=True``, because no single pass uses the whole module: an image stream's
MIM pass never touches the text embeddings or the MLM head, and a step of the alternating mode
leaves whole heads unused. DDP then marks the parameters a pass did not reach as ready (instead of
waiting for them forever), counts a parameter as used when *any* pass since the last reduction
used it (so gradients accumulated under ``no_sync()`` are reduced too), and leaves the gradient of
a parameter no rank used at all as it was — None after ``zero_grad(set_to_none=True)``. AdamW skips
a parameter whose gradient is None, so a head whose stream did not run this step is not decayed or
moved by momentum, exactly as in one process. A static graph (``static_graph=True``) would need the
same used set in every iteration, which neither mode has.

``parallelism: fsdp`` (for momo-large, whose parameters, gradients and AdamW state do not fit one
device three times over) shards them instead, with torch's FSDP2 (`fully_shard`): one unit per
encoder block (its parameters are gathered for its forward and backward and freed after) and the
root for the rest (embeddings, projections, heads). Every backward reduce-scatters: FSDP's
equivalent of ``no_sync()`` keeps *unsharded* gradients until the last pass, which costs the memory
sharding saves, and would miss a block that only an earlier pass used (separate towers). Parameters
no pass used keep a None gradient, as under DDP. Checkpoints then hold the full (gathered) module
and a name-keyed full optimizer state (`torch.distributed.checkpoint.state_dict`), so an FSDP run
resumes at any world size.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from training.recipe import Parallelism

FSDP_OPTIMIZER_FORMAT = "fsdp-full-by-name"  # checkpoint["optimizer_format"] of an FSDP run


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
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)  # before NCCL creates its communicators on some device
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


class Replicated:
    """Calls a module the way training does: directly in one process, through DDP or FSDP across ranks.

    ``replicated(*args)`` runs the module's forward; ``with replicated.sync(last):`` wraps one
    forward + backward, reducing gradients only when ``last`` is True (every pass under FSDP).
    The state methods are collectives under FSDP: every rank calls them at the same step.
    """

    def __init__(
        self, module: nn.Module, info: DistInfo, device: torch.device, parallelism: Parallelism = "ddp"
    ):
        self.module = module
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        self.sharded = info.world > 1 and parallelism == "fsdp"
        if self.sharded:
            _fully_shard(module)
        elif info.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                module,
                device_ids=[device] if device.type == "cuda" else None,
                find_unused_parameters=True,  # see the module docstring
                broadcast_buffers=False,  # the module has no buffers; parameters start equal (same seed)
            )

    def __call__(self, *args: Any) -> Any:
        return (self.ddp or self.module)(*args)

    @contextlib.contextmanager
    def sync(self, last: bool) -> Iterator[None]:
        if self.ddp is None or last:
            yield
        else:
            with self.ddp.no_sync():
                yield

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Clip the gradients' global norm (over every shard under FSDP) and return it, unclipped."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        full_tensor = getattr(norm, "full_tensor", None)  # a DTensor under FSDP
        return full_tensor() if full_tensor is not None else norm

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole module's parameters on CPU, on every rank (gathered from the shards under FSDP)."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True))
            # Every value of a module's state is a tensor (the API's type also covers optimizer states).
            return {k: v.detach().cpu() for k, v in state.items() if isinstance(v, torch.Tensor)}
        return {k: v.detach().clone().cpu() for k, v in self.module.state_dict().items()}

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> tuple[str, dict[str, Any]]:
        """(format, state) for a checkpoint; under FSDP the full state keyed by parameter name,
        complete on rank 0 only (the rank that saves)."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return FSDP_OPTIMIZER_FORMAT, get_optimizer_state_dict(self.module, optimizer, options=options)
        return "torch", optimizer.state_dict()

    def load_optimizer_state_dict(
        self, optimizer: torch.optim.Optimizer, state_format: str, state: dict[str, Any]
    ) -> None:
        if (state_format == FSDP_OPTIMIZER_FORMAT) != self.sharded:
            here = "an FSDP run" if self.sharded else "a run without FSDP (one process or DDP)"
            raise ValueError(
                f"this checkpoint's optimizer state is {state_format!r}, and {here} cannot read it: "
                "resume with the recipe's `parallelism` the checkpoint was written with"
            )
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            # Not strict: a parameter no step has reached yet (e.g. the fusion CLS before any
            # pair stream ran) has no AdamW state, in the checkpoint or in an uninterrupted run.
            options = StateDictOptions(full_state_dict=True, strict=False)
            set_optimizer_state_dict(self.module, optimizer, optim_state_dict=state, options=options)
            # Loading first gives every parameter a state (one zero-gradient step); drop it again
            # where the checkpoint had none, or AdamW's step count (its bias correction) would run ahead.
            for name, param in self.module.named_parameters():
                if name not in state["state"]:
                    optimizer.state.pop(param, None)
        else:
            optimizer.load_state_dict(state)


def _fully_shard(module: nn.Module) -> None:
    """FSDP2: one unit per encoder block (momo.layers.Block), then the root module for the rest."""
    from torch.distributed.fsdp import fully_shard

    from momo.layers import Block

    for block in [m for m in module.modules() if isinstance(m, Block)]:
        fully_shard(block)
    fully_shard(module)
