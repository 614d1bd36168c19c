"""Masking for the pretraining objectives: MAE-style patch masking and BERT-style token masking.

Both take an explicit `torch.Generator` so a resumed run draws exactly the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class PatchMask:
    keep_indices: torch.Tensor  # (B, K) visible patch indices, ascending
    mask: torch.Tensor  # (B, N) bool, True where the patch is hidden (the MIM targets)
    restore: torch.Tensor  # (B, N) index that puts [visible, hidden] back in patch order


def random_patch_masking(
    batch: int, num_patches: int, mask_ratio: float, generator: torch.Generator, device: torch.device
) -> PatchMask:
    """Hide `mask_ratio` of the patches of each image, chosen uniformly at random (as in MAE)."""
    num_keep = max(1, round(num_patches * (1.0 - mask_ratio)))
    noise = torch.rand(batch, num_patches, generator=generator).to(device)  # (B, N)
    shuffle = noise.argsort(dim=1)  # ascending noise: the first num_keep are kept
    keep = shuffle[:, :num_keep].sort(dim=1).values
    mask = torch.ones(batch, num_patches, dtype=torch.bool, device=device)
    mask.scatter_(1, keep, False)
    # `restore` for the sorted keep order: visible first (ascending), then hidden (ascending).
    hidden = shuffle[:, num_keep:].sort(dim=1).values
    order = torch.cat([keep, hidden], dim=1)  # (B, N): position -> patch index
    restore = order.argsort(dim=1)
    return PatchMask(keep, mask, restore)


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: set[int],
    generator: torch.Generator,
    probability: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: choose `probability` of the real (non-special) tokens; of those 80 % become
    [MASK], 10 % a random token, 10 % stay. Returns (masked_ids, labels), labels = -100 elsewhere.

    At least one token per sequence with a maskable token is chosen, so every row has a target.
    """
    device = input_ids.device
    ids = input_ids.clone()
    special = torch.zeros_like(ids, dtype=torch.bool)
    for sid in special_ids:
        special |= ids == sid
    maskable = attention_mask.bool() & ~special  # (B, L)
    draw = torch.rand(ids.shape, generator=generator).to(device)
    chosen = (draw < probability) & maskable
    # Guarantee one target per row: the maskable token with the smallest draw.
    has_any = maskable.any(dim=1)
    forced = torch.where(maskable, draw, torch.full_like(draw, 2.0)).argmin(dim=1)  # (B,)
    force_mask = torch.zeros_like(chosen)
    force_mask[torch.arange(ids.shape[0], device=device), forced] = True
    chosen |= force_mask & has_any[:, None]
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    action = torch.rand(ids.shape, generator=generator).to(device)
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    random_tokens = torch.randint(len(special_ids), vocab_size, ids.shape, generator=generator).to(device)
    ids = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    ids = torch.where(to_random, random_tokens, ids)
    return ids, labels
