"""Image–text contrastive (ITC): symmetric InfoNCE over the projected CLS embeddings with a
learnable, clamped temperature owned by this objective."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from momo.model import MoMoEncoder
from training.losses.base import Batch, Objective


def info_nce(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE. image, text: (B, E) unit-norm; pair i is (image i, text i)."""
    logits = scale * image @ text.t()  # (B, B): row i = image i against every text
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits.float(), targets) + F.cross_entropy(logits.t().float(), targets))


class LearnedTemperature(Objective):
    """An objective with a learnable InfoNCE temperature, clamped to at most `max_logit_scale`.

    `logit_scale` is (1,), not a 0-d scalar: FSDP shards no 0-d parameter. A 0-d value saved by
    earlier runs still loads (reshaped by the pre-hook).
    """

    def __init__(self, init_temperature: float = 0.07, max_logit_scale: float = 100.0):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1.0 / init_temperature)))
        self.max_log = math.log(max_logit_scale)
        self.register_load_state_dict_pre_hook(_scalar_logit_scale_as_1d)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(0.0, self.max_log).exp()  # (1,)

    def temperature_of(self, logit_scale: torch.Tensor) -> float:
        """The temperature a saved `logit_scale` value stands for (clamped as in training)."""
        return float(1.0 / logit_scale.detach().clamp(0.0, self.max_log).exp())

    @property
    def temperature(self) -> float:
        return self.temperature_of(self.logit_scale)


def _scalar_logit_scale_as_1d(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    key = prefix + "logit_scale"
    if key in state_dict and state_dict[key].ndim == 0:
        state_dict[key] = state_dict[key].reshape(1)


class ITCLoss(LearnedTemperature):
    name = "itc"
    needs = ("pixels", "input_ids", "attention_mask")

    def forward(
        self, encoder: MoMoEncoder, batch: Batch, generator: torch.Generator, context: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        assert batch.pixels is not None and batch.input_ids is not None and batch.attention_mask is not None
        image = encoder.embed_image(batch.pixels)  # (B, E), unit norm
        text = encoder.embed_text(batch.input_ids, batch.attention_mask)  # (B, E)
        loss = info_nce(image, text, self.scale())
        context["itc_similarity"] = (image @ text.t()).detach()  # for ITM hard negatives
        return {self.name: loss}
