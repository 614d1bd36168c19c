"""Architecture as data: a typed `MoMoConfig` and a registry of named presets.

The config is saved with every checkpoint and artifact (`config.json`), so a model directory is
self-describing: `MoMoConfig.from_json(path)` is all that is needed to rebuild the network.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Towers = Literal["shared", "separate"]


@dataclass(frozen=True)
class MoMoConfig:
    """Every architectural choice of a MoMo encoder.

    `towers="shared"` is the method: one stack of blocks for image, text and fused sequences.
    `towers="separate"` is the FLAVA-style ablation arm: an image tower, a text tower and a fusion
    encoder of `num_fusion_layers` blocks (same block design), used only to test the paper's claim.
    """

    name: str = "momo-tiny"
    num_layers: int = 4
    width: int = 192
    num_heads: int = 3
    mlp_ratio: float = 4.0
    image_size: int = 48
    patch_size: int = 8
    num_channels: int = 3
    vocab_size: int = 4096
    max_text_len: int = 32
    embed_dim: int = 128
    dropout: float = 0.0
    attention_dropout: float = 0.0
    layer_norm_eps: float = 1e-6
    # Per-channel normalisation applied by `momo.preprocess` (RGB order).
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    towers: Towers = "shared"
    num_fusion_layers: int = 2
    init_std: float = 0.02
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.width % self.num_heads != 0:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.towers not in ("shared", "separate"):
            raise ValueError(f"towers must be 'shared' or 'separate', not {self.towers!r}")
        if self.max_text_len < 2:
            raise ValueError("max_text_len must leave room for [CLS] and [SEP]")

    # --- derived sizes -------------------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        """Patches per image side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def patch_dim(self) -> int:
        """Values in one flattened patch (the MIM reconstruction target size)."""
        return self.patch_size * self.patch_size * self.num_channels

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)

    # --- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["image_mean"] = list(self.image_mean)
        data["image_std"] = list(self.image_std)
        return data

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MoMoConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown MoMoConfig fields: {unknown}")
        values = dict(data)
        for key in ("image_mean", "image_std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> MoMoConfig:
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            text = Path(path_or_text).read_text()
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> MoMoConfig:
        return dataclasses.replace(self, **changes)


# The registry of named presets. `momo-tiny` trains on 2 CPU cores and is the bundled model;
# `momo-base` is the paper's size class (~100M parameters); `momo-large` the scaled-up model.
PRESETS: dict[str, MoMoConfig] = {
    "momo-test": MoMoConfig(
        name="momo-test",
        num_layers=2,
        width=32,
        num_heads=2,
        image_size=16,
        patch_size=4,
        vocab_size=256,
        max_text_len=16,
        embed_dim=16,
        num_fusion_layers=1,
    ),
    "momo-tiny": MoMoConfig(),
    "momo-small": MoMoConfig(
        name="momo-small",
        num_layers=6,
        width=256,
        num_heads=4,
        embed_dim=192,
        num_fusion_layers=3,
    ),
    "momo-base": MoMoConfig(
        name="momo-base",
        num_layers=12,
        width=768,
        num_heads=12,
        image_size=224,
        patch_size=16,
        vocab_size=30522,
        max_text_len=64,
        embed_dim=512,
        dropout=0.1,
        num_fusion_layers=6,
        image_mean=(0.485, 0.456, 0.406),
        image_std=(0.229, 0.224, 0.225),
    ),
    "momo-large": MoMoConfig(
        name="momo-large",
        num_layers=24,
        width=1024,
        num_heads=16,
        image_size=224,
        patch_size=16,
        vocab_size=30522,
        max_text_len=64,
        embed_dim=768,
        dropout=0.1,
        num_fusion_layers=12,
        image_mean=(0.485, 0.456, 0.406),
        image_std=(0.229, 0.224, 0.225),
    ),
}


def get_preset(name: str, **overrides: Any) -> MoMoConfig:
    """The named preset, optionally with fields changed (e.g. `towers="separate"`)."""
    try:
        config = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
    return config.replace(**overrides) if overrides else config


def list_presets() -> list[str]:
    return sorted(PRESETS)
