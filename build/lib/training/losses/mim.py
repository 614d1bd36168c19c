"""Masked image modelling, MAE-style: hide ~75 % of patches, encode the visible ones, reconstruct
the normalised pixels of the hidden ones with a light decoder that this objective owns."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from momo.layers import Block
from momo.model import MoMoEncoder
from training.losses.base import Batch, Objective
from training.masking import random_patch_masking


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, patch*patch*C), row-major patches, matching the conv patch order."""
    b, c, h, w = pixels.shape
    g_h, g_w = h // patch, w // patch
    x = pixels.reshape(b, c, g_h, patch, g_w, patch)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, p, p, C)
    return x.reshape(b, g_h * g_w, patch * patch * c)


class MIMLoss(Objective):
    name = "mim"
    needs = ("pixels",)

    def __init__(
        self,
        encoder_width: int,
        num_patches: int,
        patch_dim: int,
        patch_size: int,
        *,
        mask_ratio: float = 0.75,
        decoder_width: int = 128,
        decoder_depth: int = 1,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
    ):
        super().__init__()
        self.mask_ratio = mask_ratio
        self.patch_size = patch_size
        self.norm_pix_loss = norm_pix_loss
        self.decoder_embed = nn.Linear(encoder_width, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.decoder_pos = nn.Parameter(torch.zeros(1, 1 + num_patches, decoder_width))
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_width, decoder_heads, 4 * decoder_width) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_width, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_width, patch_dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)

    def forward(
        self, encoder: MoMoEncoder, batch: Batch, generator: torch.Generator, context: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        pixels = batch.pixels
        assert pixels is not None
        b, n = pixels.shape[0], encoder.config.num_patches
        masking = random_patch_masking(b, n, self.mask_ratio, generator, pixels.device)
        latent = encoder.forward_features(pixels, masking.keep_indices)  # (B, 1+K, D)
        x = self.decoder_embed(latent)  # (B, 1+K, Dd)
        k = x.shape[1] - 1
        # Append mask tokens for the hidden patches, then unshuffle back to patch order.
        mask_tokens = self.mask_token.expand(b, n - k, -1)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)  # (B, N, Dd) in [visible, hidden] order
        index = masking.restore.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
        patches = torch.gather(patches, 1, index)  # (B, N, Dd) in patch order
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos
        for block in self.decoder_blocks:
            x = block(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]  # (B, N, patch_dim)
        target = patchify(pixels, self.patch_size)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = (pred.float() - target.float()).square().mean(dim=-1)  # (B, N)
        mask = masking.mask.float()
        return {"mim": (per_patch * mask).sum() / mask.sum()}
