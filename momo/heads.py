"""Specs of the heads kept in an artifact: ITM, answer/label classifiers (served) and whether the
MLM token head is kept (so that `momo eval` can measure the held-out MLM loss of the exact artifact).

This module is torch-free: `momo.artifact` reads `heads.json` into `HeadSpec`s, and serving an ONNX
model must not import torch. The heads' torch modules live in `momo.head_modules`. Training losses
own their heads (e.g. `training.losses.matching` holds an ITM head); the artifact keeps the ones the
service needs, with their label vocabularies in `heads.json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from momo.head_modules import ClassifierHead, TokenHead, build_head

__all__ = ["ITM_SPEC", "ClassifierHead", "HeadInput", "HeadSpec", "TokenHead", "build_head"]

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

_TORCH_NAMES = frozenset({"ClassifierHead", "TokenHead", "build_head"})


def __getattr__(name: str) -> Any:
    """The torch modules, still importable from here (`from momo.heads import TokenHead`): loaded
    from `momo.head_modules` on first use, so importing a spec never imports torch."""
    if name in _TORCH_NAMES:
        from momo import head_modules

        return getattr(head_modules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
