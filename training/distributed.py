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
    """Calls a module the way training does: directly in one process, through DDP across ranks.

    ``replicated(*args)`` runs the module's forward; ``with replicated.sync(last):`` wraps one
    forward + backward, reducing gradients only when ``last`` is True.
    """

    def __init__(self, module: nn.Module, info: DistInfo, device: torch.device):
        self.module = module
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if info.world > 1:
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
