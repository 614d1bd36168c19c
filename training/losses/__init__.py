"""One module per objective, each owning its head and returning named losses; `weighted_sum` is
the one place they are combined. `build_objective` maps a recipe's objective name to a module."""

from __future__ import annotations

from momo.config import MoMoConfig
from training.losses.base import Batch, Objective, TokenInfo, weighted_sum
from training.losses.contrastive import ITCLoss
from training.losses.matching import ITMLoss
from training.losses.mim import MIMLoss
from training.losses.mlm import MLMLoss, MMMLoss
from training.losses.text_contrastive import TextContrastiveLoss
from training.losses.vqa import ClassificationLoss, vqa_objective

OBJECTIVES = ("mim", "mlm", "itc", "itm", "mmm", "vqa", "ttc")


def _optional_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def build_objective(
    name: str, config: MoMoConfig, tokens: TokenInfo, *, answers: list[str] | None = None, **options: object
) -> Objective:
    if name == "mim":
        return MIMLoss(
            config.width,
            config.num_patches,
            config.patch_dim,
            config.patch_size,
            mask_ratio=float(options.get("mask_ratio", 0.75)),  # type: ignore[arg-type]
            decoder_width=int(options.get("decoder_width", 128)),  # type: ignore[call-overload]
            decoder_depth=int(options.get("decoder_depth", 1)),  # type: ignore[call-overload]
        )
    if name == "mlm":
        return MLMLoss(config.width, tokens, probability=float(options.get("probability", 0.15)))  # type: ignore[arg-type]
    if name == "ttc":
        return TextContrastiveLoss()
    if name == "mmm":
        return MMMLoss(config.width, tokens, max_batch=_optional_int(options.get("max_batch")))
    if name == "itc":
        return ITCLoss()
    if name == "itm":
        return ITMLoss(config.width, max_batch=_optional_int(options.get("max_batch")))
    if name == "vqa":
        if not answers:
            raise ValueError("the vqa objective needs the answer vocabulary")
        return vqa_objective(config.width, answers)
    raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")


__all__ = [
    "OBJECTIVES",
    "Batch",
    "ClassificationLoss",
    "ITCLoss",
    "ITMLoss",
    "MIMLoss",
    "MLMLoss",
    "MMMLoss",
    "Objective",
    "TextContrastiveLoss",
    "TokenInfo",
    "build_objective",
    "weighted_sum",
]
