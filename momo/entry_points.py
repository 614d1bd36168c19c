"""The three entry points every exported format runs, as one torch module.

`EntryPoints` wraps a `MoMoModel` with methods `image`, `text` and `pair` whose outputs are the
tuples `momo.graphs.entry_outputs` names. The ONNX exporter (`momo.onnx_export`), the torch programs
(`momo.torch_programs`), the parity checks (`momo.parity`) and the torch runtime's eager mode all
run this one definition, so every backend returns the same thing.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["EntryMethod", "EntryPoints", "dummy_inputs", "quiet_exporters"]


class EntryPoints(nn.Module):
    """`image`, `text`, `pair` of a `MoMoModel`, returning the tuples named by `graphs.entry_outputs`.

    The torch runtime's eager mode runs this module itself, so eager, TorchScript and ONNX share
    one definition of what each entry point returns.
    """

    def __init__(self, model: Any):  # MoMoModel
        super().__init__()
        self.encoder = model.encoder
        self.heads = model.heads
        specs = model.head_specs
        self.image_heads = [n for n in sorted(specs) if specs[n].input == "image"]
        self.text_heads = [n for n in sorted(specs) if specs[n].input == "text"]
        self.pair_heads = [n for n in sorted(specs) if specs[n].input == "pair"]

    def image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """pixels (B, C, H, W) -> embedding (B, E), cls (B, D), logits (B, n_h) per image head."""
        cls = self.encoder.encode_image(pixels)[:, 0]  # (B, D)
        logits = [self.heads[name](cls) for name in self.image_heads]
        return (self.encoder.project_image(cls), cls, *logits)

    def text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """input_ids, attention_mask (B, L) -> embedding (B, E), cls (B, D), logits per text head."""
        cls = self.encoder.encode_text(input_ids, attention_mask)[:, 0]  # (B, D)
        logits = [self.heads[name](cls) for name in self.text_heads]
        return (self.encoder.project_text(cls), cls, *logits)

    def pair(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """(B, C, H, W) + (B, L) -> fused cls (B, D), logits per pair head (itm, vqa, ...)."""
        cls = self.encoder.encode_pair(pixels, input_ids, attention_mask)[:, 0]  # (B, D)
        return (cls, *[self.heads[name](cls) for name in self.pair_heads])

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.image(pixels)


class EntryMethod(nn.Module):
    """`forward` = one entry point, for exporters that only look at `forward`."""

    def __init__(self, entry_points: EntryPoints, entry: str):
        super().__init__()
        self.entry_points = entry_points
        self.entry = entry

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        result: tuple[torch.Tensor, ...] = getattr(self.entry_points, self.entry)(*args)
        return result


def dummy_inputs(
    config: Any, device: str | torch.device = "cpu", batch: int = 2, length: int = 3
) -> dict[str, tuple[torch.Tensor, ...]]:
    """Tracing inputs per entry point. Batch 2 and a short text on purpose: the parity checks run
    other sizes, so a shape baked into a graph would show up there."""
    g = torch.Generator().manual_seed(0)
    length = max(2, min(length, config.max_text_len))
    pixels = torch.randn(batch, config.num_channels, config.image_size, config.image_size, generator=g)
    ids = torch.randint(0, config.vocab_size, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, -1] = 0
    pixels, ids, mask = pixels.to(device), ids.to(device), mask.to(device)
    return {"image": (pixels,), "text": (ids, mask), "pair": (pixels, ids, mask)}


@contextmanager
def quiet_exporters() -> Iterator[None]:
    """Silence the exporters' deprecation and tracer warnings (they are expected, see module doc)."""
    previous = logging.root.manager.disable
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        logging.disable(logging.WARNING)  # onnxruntime.quantization logs advice on the root logger
        try:
            yield
        finally:
            logging.disable(previous)
