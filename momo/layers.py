"""The building blocks shared by every modality: attention, MLP and the pre-norm block.

A `Block` receives its parts, timm style: `attn_layer`, `mlp_layer`, `norm_layer` and `act_layer`
are factories with today's defaults (`Attention`, `MLP`, `nn.LayerNorm`, `nn.GELU`), so a variant
swaps one part without a new block class. The defaults keep every module name, hence every
state-dict key (`attn.qkv.weight`, `mlp.fc1.weight`, `norm1.weight`, ...), so saved weights load.
The presets stay data (`momo.config`); parts are code and are passed where blocks are built.

Attention is written with explicit reshapes around `scaled_dot_product_attention` so that an ONNX
export keeps batch and sequence length dynamic (no shape is baked in as a Python int).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

__all__ = ["MLP", "ActFactory", "Attention", "AttnFactory", "Block", "MLPFactory", "NormFactory", "Tower"]

ActFactory = Callable[[], nn.Module]


class NormFactory(Protocol):
    """`norm_layer(width, eps=eps)` -> a normalisation over the last dimension (`nn.LayerNorm`)."""

    def __call__(self, width: int, /, *, eps: float) -> nn.Module: ...


class AttnFactory(Protocol):
    """`attn_layer(width, num_heads, attention_dropout=, dropout=)` -> a module called as
    `attn(x (B, L, D), key_mask (B, L) | None) -> (B, L, D)` (`Attention`)."""

    def __call__(
        self, width: int, num_heads: int, /, *, attention_dropout: float, dropout: float
    ) -> nn.Module: ...


class MLPFactory(Protocol):
    """`mlp_layer(width, hidden, dropout=, act_layer=)` -> a module (B, L, D) -> (B, L, D) (`MLP`)."""

    def __call__(self, width: int, hidden: int, /, *, dropout: float, act_layer: ActFactory) -> nn.Module: ...


class Attention(nn.Module):
    """Multi-head self-attention with a key padding mask; `qkv` and `proj` are the only weights."""

    def __init__(self, width: int, num_heads: int, attention_dropout: float = 0.0, dropout: float = 0.0):
        super().__init__()
        if width % num_heads != 0:
            raise ValueError(f"width {width} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.attention_dropout = attention_dropout
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, D); key_mask: (B, L) bool, True where a token may be attended to."""
        batch, seq, width = x.shape
        # (B, L, 3D) -> (B, L, 3, H, Dh) -> (3, B, H, L, Dh)
        qkv = self.qkv(x).reshape(batch, seq, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, L)
        drop = self.attention_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)  # (B, H, L, Dh)
        out = out.transpose(1, 2).reshape(batch, seq, width)
        return self.proj_drop(self.proj(out))


class MLP(nn.Module):
    """fc1 -> activation (`act_layer`, GELU) -> fc2, with dropout after each; (B, L, D) -> (B, L, D)."""

    def __init__(self, width: int, hidden: int, dropout: float = 0.0, act_layer: ActFactory = nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)).

    The parts are passed in (defaults: `Attention`, `MLP`, `nn.LayerNorm`, `nn.GELU`); see the
    module docstring for the factories' signatures.
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_width: int,
        *,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        eps: float = 1e-6,
        attn_layer: AttnFactory = Attention,
        mlp_layer: MLPFactory = MLP,
        norm_layer: NormFactory = nn.LayerNorm,
        act_layer: ActFactory = nn.GELU,
    ):
        super().__init__()
        self.norm1 = norm_layer(width, eps=eps)
        self.attn = attn_layer(width, num_heads, attention_dropout=attention_dropout, dropout=dropout)
        self.norm2 = norm_layer(width, eps=eps)
        self.mlp = mlp_layer(width, mlp_width, dropout=dropout, act_layer=act_layer)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class Tower(nn.Module):
    """A stack of blocks followed by a final LayerNorm.

    With `grad_checkpointing` on, each block's activations are recomputed in the backward pass
    instead of kept (memory for the large presets, at about one more forward of compute).
    """

    def __init__(
        self, blocks: list[Block], width: int, eps: float = 1e-6, norm_layer: NormFactory = nn.LayerNorm
    ):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm_layer(width, eps=eps)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                # Non-reentrant: works with DDP's unused-parameter search and keeps the RNG state.
                x = torch.utils.checkpoint.checkpoint(block, x, key_mask, use_reentrant=False)
            else:
                x = block(x, key_mask)
        return self.norm(x)
