"""Masked language modelling (15 %, 80/10/10) on text, and its multimodal twin MMM: the same
prediction over the text part of the fused image+text sequence. Both heads tie their output
projection to the encoder's token embedding."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from momo.head_modules import TokenHead
from momo.model import MoMoEncoder
from training.losses.base import Batch, Objective, TokenInfo
from training.masking import IGNORE_INDEX, mask_tokens


class MLMLoss(Objective):
    name = "mlm"
    needs: tuple[str, ...] = ("input_ids", "attention_mask")

    def __init__(
        self, width: int, tokens: TokenInfo, probability: float = 0.15, max_batch: int | None = None
    ):
        super().__init__()
        self.tokens = tokens
        self.probability = probability
        self.max_batch = max_batch  # MMM: only the first `max_batch` pairs (CPU budgets)
        self.head = TokenHead(width, tokens.vocab_size)

    def _mask(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        assert batch.input_ids is not None and batch.attention_mask is not None
        return mask_tokens(
            batch.input_ids,
            batch.attention_mask,
            mask_id=self.tokens.mask_id,
            vocab_size=self.tokens.vocab_size,
            special_ids=self.tokens.special_ids,
            generator=generator,
            probability=self.probability,
        )

    def _token_loss(self, hidden: torch.Tensor, labels: torch.Tensor, encoder: MoMoEncoder) -> torch.Tensor:
        """hidden: (B, L, D) text positions; labels: (B, L) with -100 where not predicted."""
        selected = labels != IGNORE_INDEX
        logits = self.head(hidden[selected], encoder.text_embed.token.weight)  # (M, V)
        return F.cross_entropy(logits.float(), labels[selected])

    def forward(
        self, encoder: MoMoEncoder, batch: Batch, generator: torch.Generator, context: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        masked_ids, labels = self._mask(batch, generator)
        assert batch.attention_mask is not None
        hidden = encoder.encode_text(masked_ids, batch.attention_mask)  # (B, L, D)
        return {self.name: self._token_loss(hidden, labels, encoder)}


class MMMLoss(MLMLoss):
    """Masked multimodal modelling: MLM over the text part of the fused sequence."""

    name = "mmm"
    needs = ("pixels", "input_ids", "attention_mask")

    def forward(
        self, encoder: MoMoEncoder, batch: Batch, generator: torch.Generator, context: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        assert batch.pixels is not None and batch.attention_mask is not None
        masked_ids, labels = self._mask(batch, generator)
        n = batch.pixels.shape[0] if self.max_batch is None else self.max_batch
        masked_ids, labels = masked_ids[:n], labels[:n]
        fused = encoder.encode_pair(batch.pixels[:n], masked_ids, batch.attention_mask[:n])  # (B, 2+N+L, D)
        text_hidden = fused[:, encoder.text_offset() :]  # (B, L, D)
        return {self.name: self._token_loss(text_hidden, labels, encoder)}
