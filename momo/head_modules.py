"""The torch modules of kept heads: classifiers over a CLS (ITM, VQA answers, labels) and the MLM
token head. Their specs (what a head reads and predicts, `heads.json`) are `momo.heads.HeadSpec`,
which stays torch-free so that reading an artifact imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from momo.heads import HeadSpec

__all__ = ["ClassifierHead", "TokenHead", "build_head"]


class ClassifierHead(nn.Module):
    """CLS features (B, D) -> logits (B, num_labels); an MLP when `hidden` is set."""

    def __init__(self, width: int, num_labels: int, hidden: int | None = None):
        super().__init__()
        if hidden:
            self.net: nn.Module = nn.Sequential(
                nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, num_labels)
            )
        else:
            self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, num_labels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def build_head(width: int, spec: HeadSpec) -> ClassifierHead:
    """The classifier `spec` describes, over a CLS of `width`."""
    return ClassifierHead(width, len(spec.labels), spec.hidden)


class TokenHead(nn.Module):
    """hidden (…, D) -> vocabulary logits (…, V), output weights tied to the token embedding."""

    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width, eps=1e-6))
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, token_embedding: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(hidden), token_embedding, self.bias)
