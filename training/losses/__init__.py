"""One module per objective, each owning its head and returning named losses; `weighted_sum` is
the one place they are combined.

`OBJECTIVES` is the registry: a recipe's objective name -> the typed options it accepts and how the
module is built. A recipe's `objective_options: {mlm: {probability: 0.3}}` is checked against the
options dataclass when the recipe loads (`parse_options`), so a misspelt option fails before training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from momo.config import MoMoConfig
from training.losses.base import Batch, Objective, TokenInfo, weighted_sum
from training.losses.contrastive import ITCLoss
from training.losses.matching import ITMLoss
from training.losses.mim import MIMLoss
from training.losses.mlm import MLMLoss, MMMLoss
from training.losses.text_contrastive import TextContrastiveLoss
from training.losses.vqa import ClassificationLoss, vqa_objective


@dataclass(frozen=True)
class NoOptions:
    """The objective takes no options."""


@dataclass(frozen=True)
class MIMOptions:
    mask_ratio: float = 0.75
    decoder_width: int = 128
    decoder_depth: int = 1


@dataclass(frozen=True)
class MLMOptions:
    probability: float = 0.15  # share of real tokens predicted (80/10/10 BERT masking)


@dataclass(frozen=True)
class FusedOptions:
    max_batch: int | None = None  # fused passes use only the first `max_batch` pairs (CPU budgets)


@dataclass(frozen=True)
class BuildContext:
    """What a builder may read besides its options."""

    config: MoMoConfig
    tokens: TokenInfo
    answers: list[str] | None = None


@dataclass(frozen=True)
class ObjectiveEntry:
    options: type
    build: Callable[[BuildContext, Any], Objective]


def _vqa(context: BuildContext, _: NoOptions) -> Objective:
    if not context.answers:
        raise ValueError("the vqa objective needs the answer vocabulary")
    return vqa_objective(context.config.width, context.answers)


OBJECTIVES: dict[str, ObjectiveEntry] = {
    "mim": ObjectiveEntry(
        MIMOptions,
        lambda c, o: MIMLoss(
            c.config.width,
            c.config.num_patches,
            c.config.patch_dim,
            c.config.patch_size,
            mask_ratio=o.mask_ratio,
            decoder_width=o.decoder_width,
            decoder_depth=o.decoder_depth,
        ),
    ),
    "mlm": ObjectiveEntry(MLMOptions, lambda c, o: MLMLoss(c.config.width, c.tokens, o.probability)),
    "mmm": ObjectiveEntry(
        FusedOptions, lambda c, o: MMMLoss(c.config.width, c.tokens, max_batch=o.max_batch)
    ),
    "itc": ObjectiveEntry(NoOptions, lambda c, o: ITCLoss()),
    "itm": ObjectiveEntry(FusedOptions, lambda c, o: ITMLoss(c.config.width, max_batch=o.max_batch)),
    "vqa": ObjectiveEntry(NoOptions, _vqa),
    "ttc": ObjectiveEntry(NoOptions, lambda c, o: TextContrastiveLoss()),
}


def parse_options(name: str, raw: Mapping[str, Any]) -> Any:
    """`raw` (from a recipe) as objective `name`'s options dataclass; unknown names and values of the
    wrong type raise ValueError."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
    options_type = OBJECTIVES[name].options
    fields = {f.name: f for f in dataclasses.fields(options_type)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        known = ", ".join(fields) or "none"
        raise ValueError(f"objective {name!r}: unknown options {unknown} (known: {known})")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        default = fields[key].default
        if value is None or isinstance(default, bool):
            values[key] = value
        elif isinstance(default, float) and isinstance(value, int | float) and not isinstance(value, bool):
            values[key] = float(value)
        elif (default is None or isinstance(default, int)) and isinstance(value, int):
            values[key] = value
        else:
            raise ValueError(f"objective {name!r}: option {key!r} has the wrong type ({value!r})")
    return options_type(**values)


def build_objective(
    name: str, config: MoMoConfig, tokens: TokenInfo, *, answers: list[str] | None = None, **options: Any
) -> Objective:
    """The objective module for a recipe name, built from its (checked) options."""
    parsed = parse_options(name, options)
    return OBJECTIVES[name].build(BuildContext(config, tokens, answers), parsed)


__all__ = [
    "OBJECTIVES",
    "Batch",
    "BuildContext",
    "ClassificationLoss",
    "FusedOptions",
    "ITCLoss",
    "ITMLoss",
    "MIMLoss",
    "MIMOptions",
    "MLMLoss",
    "MLMOptions",
    "MMMLoss",
    "NoOptions",
    "Objective",
    "TextContrastiveLoss",
    "TokenInfo",
    "build_objective",
    "parse_options",
    "weighted_sum",
]
