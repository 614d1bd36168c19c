"""Text–text contrastive (TTC): symmetric InfoNCE between the joint text embeddings of two texts that
mean the same, a dictionary headword and its definition.

MLM trains the text tower's tokens, ITC only pulls captions towards images, so in momo-tiny:v1 the
served text embedding knew little beyond caption words (WordNet probe on it: 0.286). Headword ↔
definition pairs (GCIDE, 140k in train) teach the same embedding what words mean, from real text.
"""

from __future__ import annotations

from typing import Any

import torch

from momo.model import MoMoEncoder
from training.losses.base import Batch
from training.losses.contrastive import LearnedTemperature, info_nce


class TextContrastiveLoss(LearnedTemperature):
    name = "ttc"
    needs = ("input_ids", "attention_mask")

    def forward(
        self, encoder: MoMoEncoder, batch: Batch, generator: torch.Generator, context: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        assert batch.input_ids is not None and batch.attention_mask is not None
        if "pair_size" not in batch.meta:
            raise ValueError("the ttc objective reads text_pair streams (queries, then their texts)")
        b = int(batch.meta["pair_size"])
        embedded = encoder.embed_text(batch.input_ids, batch.attention_mask)  # (2B, E), unit norm
        return {self.name: info_nce(embedded[:b], embedded[b:], self.scale())}
