"""What every objective shares: the batch it reads, the context it can share, named losses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from momo.model import MoMoEncoder


@dataclass
class Batch:
    """One stream's batch; fields a stream kind does not have stay None.

    pixels: (B, C, H, W) float; input_ids / attention_mask: (B, L) int64; labels: (B,) int64.
    """

    pixels: torch.Tensor | None = None
    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        if "pair_size" in self.meta:  # a text_pair batch: 2B rows, B items
            return int(self.meta["pair_size"])
        for value in (self.pixels, self.input_ids, self.labels):
            if value is not None:
                return int(value.shape[0])
        return 0

    def to(self, device: torch.device) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(
            move(self.pixels), move(self.input_ids), move(self.attention_mask), move(self.labels), self.meta
        )


@dataclass
class TokenInfo:
    """What token masking needs to know about the tokenizer."""

    mask_id: int
    pad_id: int
    vocab_size: int
    special_ids: set[int]


class Objective(nn.Module):
    """One pretraining objective: owns its head, returns named losses, never touches the optimizer.

    `context` is shared by the objectives of one stream within a step (e.g. ITC leaves its
    similarity matrix for ITM's hard-negative mining).
    """

    name: str = "objective"
    needs: tuple[str, ...] = ()  # Batch fields required

    def forward(
        self, encoder: MoMoEncoder, batch: Batch, generator: torch.Generator, context: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def weighted_sum(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The one place losses are combined: sum of weight × loss (weight 1.0 when not given)."""
    total: torch.Tensor | None = None
    for name, value in losses.items():
        term = weights.get(name, 1.0) * value
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no losses to combine")
    return total
