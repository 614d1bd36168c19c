"""The `Runtime` interface that every inference backend implements (`momo.onnx_runtime`,
`momo.torch_runtime`), with the validation and post-processing they all share, and the default
`GraphExporter`. `momo.runtime` is the front door: `load_runtime` and every public name.

A backend implements one primitive, `_run(entry, arrays) -> {output name: array}`, for the entry
points "image", "text" and "pair" (`momo.entry_points.EntryPoints`; output names fixed by
`momo.graphs.entry_outputs`). Everything callers see (shape checks, empty batches, heads, ITM
probabilities, VQA answers, warm-up) lives here, so every backend behaves the same. This module
imports numpy, `momo.artifact` and `momo.graphs` only (never torch, never `momo.export`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from momo.artifact import Artifact
from momo.graphs import entry_outputs

__all__ = ["Runtime", "export_with_torch"]


def export_with_torch(artifact: Artifact, directory: Path, formats: Sequence[str]) -> None:
    """The default `GraphExporter`: `momo.graph_writer.export_graphs`, imported only when a graph
    must be exported (it imports torch and onnx)."""
    from momo.graph_writer import export_graphs

    export_graphs(artifact, directory, formats)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True))


# --- the interface ---------------------------------------------------------------------------------
class Runtime(ABC):
    """Inference over one artifact. Inputs are preprocessed numpy arrays; outputs are numpy arrays.

    Subclasses implement `_run(entry, arrays) -> {output name: array}` for the entry points
    "image", "text" and "pair"; validation, empty batches, heads, ITM and VQA post-processing are
    shared here so every backend behaves the same. Calls are thread-safe (ONNX Runtime sessions and
    torch inference both allow concurrent calls).
    """

    kind: str  # "onnx" | "onnx-int8" | "torch"
    device: str  # "cpu" | "cuda"
    artifact: Artifact

    def __init__(self, artifact: Artifact, kind: str, device: str):
        self.artifact = artifact
        self.kind = kind
        self.device = device
        self.outputs = entry_outputs(artifact.heads.heads)
        self._closed = False

    # --- backend primitive --------------------------------------------------------------------
    @abstractmethod
    def _run(self, entry: str, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Run entry point `entry` ("image" | "text" | "pair") on validated inputs."""

    # --- description --------------------------------------------------------------------------
    @property
    def config(self) -> Any:  # MoMoConfig
        return self.artifact.config

    @property
    def embed_dim(self) -> int:
        return int(self.artifact.config.embed_dim)

    @property
    def head_names(self) -> list[str]:
        return sorted(self.artifact.heads.heads)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "device": self.device, "model": self.artifact.reference}

    # --- validation ---------------------------------------------------------------------------
    def _pixels(self, pixels: np.ndarray) -> np.ndarray:
        config = self.artifact.config
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        expected = (config.num_channels, config.image_size, config.image_size)
        if pixels.ndim != 4 or pixels.shape[1:] != expected:
            raise ValueError(
                f"pixels must have shape (B, {', '.join(map(str, expected))}), got {pixels.shape}"
            )
        return pixels

    def _text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        config = self.artifact.config
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise ValueError(f"input_ids {ids.shape} and attention_mask {mask.shape} must be equal (B, L)")
        if ids.shape[0] and not 1 <= ids.shape[1] <= config.max_text_len:
            raise ValueError(f"text length {ids.shape[1]} outside [1, {config.max_text_len}]")
        if ids.size and (ids.min() < 0 or ids.max() >= config.vocab_size):
            raise ValueError(f"input_ids outside the vocabulary [0, {config.vocab_size})")
        if mask.size and not mask.any(axis=1).all():
            raise ValueError("every attention_mask row needs at least one attended token")
        return ids, mask

    def _pair(
        self, pixels: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pixels = self._pixels(pixels)
        ids, mask = self._text(input_ids, attention_mask)
        if pixels.shape[0] != ids.shape[0]:
            raise ValueError(f"{pixels.shape[0]} images but {ids.shape[0]} texts")
        return pixels, ids, mask

    def _call(self, entry: str, inputs: list[np.ndarray], output: str, width: int) -> np.ndarray:
        if self._closed:
            raise RuntimeError("runtime is closed")
        if inputs[0].shape[0] == 0:
            return np.zeros((0, width), dtype=np.float32)
        return np.asarray(self._run(entry, inputs)[output], dtype=np.float32)

    # --- public API ---------------------------------------------------------------------------
    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 -> (B, E) unit-norm float32 image embeddings."""
        return self._call("image", [self._pixels(pixels)], "embedding", self.embed_dim)

    def encode_texts(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, L) int64 ids and mask -> (B, E) unit-norm float32 text embeddings."""
        return self._call("text", list(self._text(input_ids, attention_mask)), "embedding", self.embed_dim)

    def image_features(self, pixels: np.ndarray) -> np.ndarray:
        """(B, C, H, W) -> (B, D) image CLS before projection (linear probes, fine-tuning)."""
        return self._call("image", [self._pixels(pixels)], "cls", self.artifact.config.width)

    def text_features(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, L) -> (B, D) text CLS before projection."""
        return self._call(
            "text", list(self._text(input_ids, attention_mask)), "cls", self.artifact.config.width
        )

    def pair_features(
        self, pixels: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray
    ) -> np.ndarray:
        """(B, C, H, W) + (B, L) -> (B, D) fused CLS."""
        return self._call(
            "pair", list(self._pair(pixels, input_ids, attention_mask)), "cls", self.artifact.config.width
        )

    def _widths(self, entry: str) -> dict[str, int]:
        config, specs = self.artifact.config, self.artifact.heads.heads
        widths = {"embedding": config.embed_dim, "cls": config.width}
        widths.update({f"logits_{n}": len(s.labels) for n, s in specs.items()})
        return {name: widths[name] for name in self.outputs[entry]}

    def _all(self, entry: str, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        if self._closed:
            raise RuntimeError("runtime is closed")
        if inputs[0].shape[0] == 0:
            return {name: np.zeros((0, w), dtype=np.float32) for name, w in self._widths(entry).items()}
        return {k: np.asarray(v, dtype=np.float32) for k, v in self._run(entry, inputs).items()}

    def image_outputs(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the image entry point in one pass: embedding (B, E), cls (B, D) and
        logits_<head> (B, n) for each image head (evaluation needs embedding and CLS together)."""
        return self._all("image", [self._pixels(pixels)])

    def text_outputs(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the text entry point: embedding, cls, logits_<head> per text head."""
        return self._all("text", list(self._text(input_ids, attention_mask)))

    def pair_outputs(
        self, pixels: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Every output of the pair entry point: fused cls, logits_<head> per pair head."""
        return self._all("pair", list(self._pair(pixels, input_ids, attention_mask)))

    def head_logits(
        self,
        head: str,
        pixels: np.ndarray | None = None,
        input_ids: np.ndarray | None = None,
        attention_mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """Logits (B, n_labels) of head `head`, from the inputs its kind reads (image/text/pair)."""
        specs = self.artifact.heads.heads
        if head not in specs:
            raise KeyError(f"model {self.artifact.reference} has no head {head!r} (heads: {self.head_names})")
        spec = specs[head]
        width = len(spec.labels)
        if spec.input in ("image", "pair") and pixels is None:
            raise ValueError(f"head {head!r} reads {spec.input} inputs: pixels are required")
        if spec.input in ("text", "pair") and (input_ids is None or attention_mask is None):
            raise ValueError(
                f"head {head!r} reads {spec.input} inputs: input_ids and attention_mask are required"
            )
        if spec.input == "image":
            assert pixels is not None
            inputs = [self._pixels(pixels)]
        elif spec.input == "text":
            assert input_ids is not None and attention_mask is not None
            inputs = list(self._text(input_ids, attention_mask))
        else:
            assert pixels is not None and input_ids is not None and attention_mask is not None
            inputs = list(self._pair(pixels, input_ids, attention_mask))
        return self._call(spec.input, inputs, f"logits_{head}", width)

    def _itm_head(self) -> str:
        specs = self.artifact.heads.heads
        if "itm" in specs:
            return "itm"
        for name in sorted(specs):
            if specs[name].task == "itm":
                return name
        raise KeyError(f"model {self.artifact.reference} has no ITM head (heads: {self.head_names})")

    def score_pairs(
        self, pixels: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray
    ) -> np.ndarray:
        """(B,) probability that each image matches its text, from the ITM head."""
        head = self._itm_head()
        labels = self.artifact.heads.heads[head].labels
        match = labels.index("match") if "match" in labels else len(labels) - 1
        logits = self.head_logits(head, pixels, input_ids, attention_mask)  # (B, 2)
        if logits.shape[0] == 0:
            return np.zeros((0,), dtype=np.float32)
        return _softmax(logits)[:, match].astype(np.float32)

    def answer(
        self, pixels: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray, top_k: int = 5
    ) -> list[list[tuple[str, float]]]:
        """The `top_k` most likely answers (label, probability) per (image, question), VQA head "vqa"."""
        if "vqa" not in self.artifact.heads.heads:
            raise KeyError(f"model {self.artifact.reference} has no VQA head (heads: {self.head_names})")
        labels = self.artifact.heads.heads["vqa"].labels
        logits = self.head_logits("vqa", pixels, input_ids, attention_mask)  # (B, A)
        if logits.shape[0] == 0:
            return []
        probs = _softmax(logits)
        k = max(1, min(int(top_k), len(labels)))
        order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        return [[(labels[j], float(row[j])) for j in idx] for row, idx in zip(probs, order, strict=True)]

    def warmup(self) -> None:
        """Run every entry point once on dummy inputs (batch 2, full text length): allocations,
        kernel selection and TorchScript profiling happen here, not on the first request."""
        config = self.artifact.config
        rng = np.random.default_rng(0)
        pixels = rng.standard_normal((2, config.num_channels, config.image_size, config.image_size)).astype(
            np.float32
        )
        ids = rng.integers(0, config.vocab_size, size=(2, config.max_text_len), dtype=np.int64)
        mask = np.ones_like(ids)
        mask[1, config.max_text_len // 2 :] = 0
        for _ in range(2):  # TorchScript's profiling executor optimises on the second call
            self._run("image", [pixels])
            self._run("text", [ids, mask])
            self._run("pair", [pixels, ids, mask])

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(model={self.artifact.reference!r}, kind={self.kind!r}, device={self.device!r})"
