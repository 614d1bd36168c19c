"""The block takes its parts as arguments (timm style); the defaults keep every weight name."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from momo.config import MoMoConfig
from momo.layers import MLP, ActFactory, Attention, Block
from momo.model import MoMoEncoder, MoMoModel
from momo.store import ModelStore

REPO_STORE = Path(__file__).resolve().parents[2] / "model_store"


class ScaleNorm(nn.Module):
    """A norm with another state dict (one `scale`), to show the part really is swapped."""

    def __init__(self, width: int, *, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x / (x.norm(dim=-1, keepdim=True) + self.eps)


class GatedMLP(nn.Module):
    def __init__(self, width: int, hidden: int, *, dropout: float, act_layer: ActFactory) -> None:
        super().__init__()
        self.gate = nn.Linear(width, hidden)
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


def test_default_block_parts_and_keys() -> None:
    block = Block(16, 2, 32)
    assert isinstance(block.attn, Attention) and isinstance(block.mlp, MLP)
    assert isinstance(block.norm1, nn.LayerNorm) and isinstance(block.mlp.act, nn.GELU)
    assert sorted(block.state_dict()) == sorted(
        f"{part}.{p}"
        for part, params in {
            "norm1": ("weight", "bias"),
            "norm2": ("weight", "bias"),
            "attn.qkv": ("weight", "bias"),
            "attn.proj": ("weight", "bias"),
            "mlp.fc1": ("weight", "bias"),
            "mlp.fc2": ("weight", "bias"),
        }.items()
        for p in params
    )


def test_block_parts_are_passed_in() -> None:
    block = Block(16, 2, 32, norm_layer=ScaleNorm, mlp_layer=GatedMLP, act_layer=nn.SiLU)
    assert isinstance(block.norm1, ScaleNorm) and isinstance(block.norm2, ScaleNorm)
    assert isinstance(block.mlp, GatedMLP) and isinstance(block.mlp.act, nn.SiLU)
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    assert block(x, mask).shape == (2, 5, 16)


def test_encoder_passes_parts_to_every_block_and_tower_norm(test_config: MoMoConfig) -> None:
    encoder = MoMoEncoder(test_config, norm_layer=ScaleNorm)
    norms = [m for m in encoder.modules() if isinstance(m, ScaleNorm)]
    assert len(norms) == 2 * test_config.num_layers + 1  # two per block, one after the tower
    assert not any(isinstance(m, nn.LayerNorm) for m in encoder.encoder.modules())
    pixels = torch.randn(2, test_config.num_channels, test_config.image_size, test_config.image_size)
    assert encoder.encode_image(pixels).shape == (2, 1 + test_config.num_patches, test_config.width)


def test_bundled_weights_keep_their_names() -> None:
    """The default parts build exactly the state-dict keys the bundled model was saved with."""
    artifact = ModelStore(REPO_STORE).load()
    with safe_open(str(artifact.path / "model.safetensors"), framework="pt") as weights:
        saved = set(weights.keys())
    model = MoMoModel(
        artifact.config, head_specs=artifact.heads.heads, with_token_head=artifact.heads.token_head
    )
    assert set(model.state_dict()) == saved
