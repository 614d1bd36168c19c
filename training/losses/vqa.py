"""VQA as answer classification over the fused CLS (the downstream head the service uses)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from momo.head_modules import ClassifierHead, build_head
from momo.heads import HeadSpec
from momo.model import MoMoEncoder
from training.losses.base import Batch, Objective


class ClassificationLoss(Objective):
    """Cross-entropy of a head over the CLS of its input kind (image, text or fused pair)."""

    needs = ("labels",)

    def __init__(self, width: int, spec: HeadSpec, name: str):
        super().__init__()
        self.name = name
        self.spec = spec
        self.head: ClassifierHead = build_head(width, spec)

    def logits(self, encoder: MoMoEncoder, batch: Batch) -> torch.Tensor:
        if self.spec.input == "image":
            assert batch.pixels is not None
            features = encoder.encode_image(batch.pixels)[:, 0]
        elif self.spec.input == "text":
            assert batch.input_ids is not None and batch.attention_mask is not None
            features = encoder.encode_text(batch.input_ids, batch.attention_mask)[:, 0]
        else:
            assert batch.pixels is not None and batch.input_ids is not None
            assert batch.attention_mask is not None
            features = encoder.encode_pair(batch.pixels, batch.input_ids, batch.attention_mask)[:, 0]
        return self.head(features)

    def forward(
        self, encoder: MoMoEncoder, batch: Batch, generator: torch.Generator, context: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        assert batch.labels is not None
        logits = self.logits(encoder, batch)
        context[f"{self.name}_accuracy"] = (logits.argmax(-1) == batch.labels).float().mean().detach()
        return {self.name: F.cross_entropy(logits.float(), batch.labels)}


def vqa_objective(width: int, answers: list[str]) -> ClassificationLoss:
    spec = HeadSpec(input="pair", labels=list(answers), task="vqa", hidden=2 * width)
    return ClassificationLoss(width, spec, name="vqa")
