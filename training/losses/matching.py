"""Image–text matching (ITM): a binary head on the fused CLS, with hard negatives sampled from the
contrastive similarities (a text that looks like the image's caption but is false of it, and vice
versa). A mined negative must be false of its image (`false_caption_mask`): momo-tiny:v1 drew
negatives by index, so a "photo of a coat" was a "no match" for another coat and ITM stayed at
chance (0.658 -> 0.636 in the v1 evaluation)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from momo.head_modules import ClassifierHead, build_head
from momo.heads import ITM_SPEC
from momo.model import MoMoEncoder
from training.data import shapes as shapes_world
from training.losses.base import Batch, Objective


def false_caption_mask(meta: dict[str, Any], size: int) -> torch.Tensor:
    """(B, B) bool: ``[i, j]`` is True when caption j is false of image i, so (image i, text j) may be
    an ITM negative. Never True on the diagonal.

    Per-item fields (:class:`training.data.formats.PairRecord`): with a scene's ``objects`` and a
    caption's ``claim`` (the shapes world) the claim is checked against the scene; with two class
    ``category`` values, captions of another class are false; items annotated in different ways come from
    different sources and are false of each other. Items with no annotation at all (user data) fall
    back to "every other caption", the usual index-based negatives.
    """
    labels: list[Any] = meta.get("category") or [None] * size
    objects: list[Any] = meta.get("objects") or [None] * size
    claims: list[Any] = meta.get("claim") or [None] * size
    scenes = [None if o is None else [shapes_world.ShapeObject(**x) for x in o] for o in objects]
    mask = torch.ones(size, size, dtype=torch.bool)
    for i in range(size):
        for j in range(size):
            if i == j:
                mask[i, j] = False
            elif (scene := scenes[i]) is not None and claims[j] is not None:
                mask[i, j] = not shapes_world.caption_true_of(claims[j], scene)
            elif labels[i] is not None and labels[j] is not None:
                mask[i, j] = labels[i] != labels[j]
    return mask


def sample_hard_negatives(
    similarity: torch.Tensor, generator: torch.Generator, allowed: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """similarity: (B, B), allowed: (B, B) bool -> (columns (B,), has_negative (B,) bool).

    For each row a column drawn with p ∝ softmax(similarity / 0.05) among the allowed ones (default:
    every column but the row's own). A row with no allowed column has ``has_negative`` False and an
    arbitrary column.
    """
    b = similarity.shape[0]
    if allowed is None:
        allowed = ~torch.eye(b, dtype=torch.bool)
    allowed = allowed.to(similarity.device)
    weights = F.softmax(similarity.float() / 0.05, dim=1) * allowed
    weights = weights + 1e-8 * allowed  # a softmax that underflowed still leaves every allowed column
    has_negative = allowed.any(dim=1)
    weights[~has_negative] = 1.0
    columns = torch.multinomial(weights.cpu(), 1, generator=generator).squeeze(1).to(similarity.device)
    return columns, has_negative


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
        false_of = false_caption_mask(batch.meta, b)  # (B, B): caption j false of image i
        # (B,) a false caption per image, and a image each caption is false of
        neg_text, image_has = sample_hard_negatives(similarity, generator, false_of)
        neg_image, text_has = sample_hard_negatives(similarity.t(), generator, false_of.t())
        if self.max_batch is not None and self.max_batch < b:
            b = self.max_batch
        rows = torch.arange(b, device=pixels.device)
        image_rows, text_rows = rows[image_has[:b]], rows[text_has[:b]]
        # positives, (image, a caption false of it), (an image the caption is false of, caption)
        all_pixels = torch.cat([pixels[rows], pixels[image_rows], pixels[neg_image[text_rows]]], dim=0)
        all_ids = torch.cat([ids[rows], ids[neg_text[image_rows]], ids[text_rows]], dim=0)
        all_mask = torch.cat([mask[rows], mask[neg_text[image_rows]], mask[text_rows]], dim=0)
        n_negatives = len(image_rows) + len(text_rows)
        labels = torch.cat([torch.ones(b), torch.zeros(n_negatives)]).long().to(pixels.device)
        fused_cls = encoder.encode_pair(all_pixels, all_ids, all_mask)[:, 0]  # (3B, D)
        logits = self.head(fused_cls)  # (3B, 2)
        loss = F.cross_entropy(logits.float(), labels)
        context["itm_accuracy"] = (logits.argmax(-1) == labels).float().mean().detach()
        context["itm_negatives"] = n_negatives
        return {self.name: loss}
