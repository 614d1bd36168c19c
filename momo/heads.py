"""Specs of the heads kept in an artifact: ITM, answer/label classifiers (served) and whether the
MLM token head is kept (so that `momo eval` can measure the held-out MLM loss of the exact artifact).

This module is torch-free: `momo.artifact` reads `heads.json` into `HeadSpec`s, and serving an ONNX
model must not import torch. The heads' torch modules live in `momo.head_modules`. Training losses
own their heads (e.g. `training.losses.matching` holds an ITM head); the artifact keeps the ones the
service needs, with their label vocabularies in `heads.json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["ITM_SPEC", "HeadInput", "HeadSpec"]

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


ITM_SPEC = HeadSpec(input="pair", labels=["no_match", "match"], task="itm")
