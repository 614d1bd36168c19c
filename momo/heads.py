"""Heads that are kept in an artifact: ITM, answer/label classifiers (served) and the MLM token head
(kept so that `momo eval` can measure the held-out MLM loss of the exact artifact).

Training losses own their heads (e.g. `training.losses.itm.ITMLoss` holds an `ITMHead`); the
artifact keeps the ones the service needs, with their label vocabularies in `heads.json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

HeadInput = Literal["image", "text", "pair"]


@dataclass
class HeadSpec:
    """What a head reads (the CLS of an image, a text or a fused pair) and what it predicts."""

    input: HeadInput
    labels: list[str]
    task: str = "classification"  # "classification" | "vqa" | "itm"
    hidden: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadSpec:
        return cls(**data)


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
    return ClassifierHead(width, len(spec.labels), spec.hidden)


ITM_SPEC = HeadSpec(input="pair", labels=["no_match", "match"], task="itm")


class TokenHead(nn.Module):
    """hidden (…, D) -> vocabulary logits (…, V), output weights tied to the token embedding."""

    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width, eps=1e-6))
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, token_embedding: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(hidden), token_embedding, self.bias)
