"""Image–text matching (ITM): a binary head on the fused CLS, with hard negatives sampled from the
contrastive similarities (a text that looks like the image's caption but is not, and vice versa)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from momo.heads import ITM_SPEC, ClassifierHead, build_head
from momo.model import MoMoEncoder
from training.losses.base import Batch, Objective


def sample_hard_negatives(similarity: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """similarity: (B, B) -> (B,) for each row a column != row, drawn with p ∝ softmax(similarity).

    Rows that are exact duplicates of their positive (same caption twice in a batch) are still
    negatives by index; with B >= 2 a choice always exists.
    """
    b = similarity.shape[0]
    weights = F.softmax(similarity.float() / 0.05, dim=1)
    weights = weights.masked_fill(torch.eye(b, dtype=torch.bool, device=similarity.device), 0.0)
    weights = weights + 1e-8 * (~torch.eye(b, dtype=torch.bool, device=similarity.device))
    return torch.multinomial(weights.cpu(), 1, generator=generator).squeeze(1).to(similarity.device)


class ITMLoss(Objective):
    name = "itm"
    needs = ("pixels", "input_ids", "attention_mask")

    def __init__(self, width: int, max_batch: int | None = None):
        super().__init__()
        self.head: ClassifierHead = build_head(width, ITM_SPEC)
        # The fused sequence is the longest one; on CPU budgets ITM may use the first `max_batch`
        # pairs of the batch (negatives are still mined against the whole batch).
        self.max_batch = max_batch

    def forward(
        self, encoder: MoMoEncoder, batch: Batch, generator: torch.Generator, context: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        pixels, ids, mask = batch.pixels, batch.input_ids, batch.attention_mask
        assert pixels is not None and ids is not None and mask is not None
        b = pixels.shape[0]
        similarity = context.get("itc_similarity")
        if similarity is None:  # ITC not in this stream: sample negatives uniformly
            similarity = torch.zeros(b, b, device=pixels.device)
        neg_text = sample_hard_negatives(similarity, generator)  # (B,) text index per image
        neg_image = sample_hard_negatives(similarity.t(), generator)  # (B,) image index per text
        if self.max_batch is not None and self.max_batch < b:
            b = self.max_batch
            neg_text, neg_image = neg_text[:b], neg_image[:b]
        positives = slice(0, b)
        # 3B pairs: positives, (image, hard negative text), (hard negative image, text).
        all_pixels = torch.cat([pixels[positives], pixels[positives], pixels[neg_image]], dim=0)
        all_ids = torch.cat([ids[positives], ids[neg_text], ids[positives]], dim=0)
        all_mask = torch.cat([mask[positives], mask[neg_text], mask[positives]], dim=0)
        labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(pixels.device)
        fused_cls = encoder.encode_pair(all_pixels, all_ids, all_mask)[:, 0]  # (3B, D)
        logits = self.head(fused_cls)  # (3B, 2)
        loss = F.cross_entropy(logits.float(), labels)
        context["itm_accuracy"] = (logits.argmax(-1) == labels).float().mean().detach()
        return {self.name: loss}
