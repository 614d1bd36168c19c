"""Parity of exported graphs with eager torch, on batch sizes and text lengths other than the dummy
inputs used for tracing (so a shape baked into a graph shows up here).

`parity_report` is what `momo export --check-parity` records in `export.json` and the manifest;
`momo.export.export_artifact` refuses to install fp32 graphs whose report is not `ok`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from momo.entry_points import EntryPoints
from momo.graphs import ENTRY_POINTS, ONNX_FILES, entry_outputs
from momo.torch_programs import load_torch_program

__all__ = ["FP32_TOLERANCE", "parity_inputs", "parity_report"]

FP32_TOLERANCE = 1e-4


def _runner(directory: Path, fmt: str) -> Callable[[str, list[np.ndarray]], list[np.ndarray]]:
    if fmt in ONNX_FILES:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = min(2, os.cpu_count() or 1)
        options.log_severity_level = 3
        sessions = {
            e: ort.InferenceSession(str(directory / f), options, providers=["CPUExecutionProvider"])
            for e, f in ONNX_FILES[fmt].items()
        }

        def run_onnx(entry: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
            session = sessions[entry]
            feeds = {i.name: a for i, a in zip(session.get_inputs(), inputs, strict=True)}
            return [np.asarray(v) for v in session.run(None, feeds)]

        return run_onnx
    program = load_torch_program(directory, fmt)

    def run_torch(entry: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            values = getattr(program, entry)(*[torch.from_numpy(a) for a in inputs])
        return [v.numpy() for v in values]

    return run_torch


def parity_inputs(config: Any, batch: int, length: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Random inputs: ids over the whole vocabulary, ragged masks (row 0 full length)."""
    rng = np.random.default_rng(seed + 1000 * batch + length)
    pixels = rng.standard_normal((batch, config.num_channels, config.image_size, config.image_size)).astype(
        np.float32
    )
    ids = rng.integers(0, config.vocab_size, size=(batch, length), dtype=np.int64)
    lengths = rng.integers(1, length + 1, size=batch)
    lengths[0] = length
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    return {"image": [pixels], "text": [ids, mask], "pair": [pixels, ids, mask]}


def parity_report(
    model: Any,
    directory: str | Path,
    formats: Sequence[str],
    *,
    batch_sizes: Sequence[int] = (1, 3, 17),
    text_lengths: Sequence[int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Compare every exported format in `directory` with eager torch on fresh shapes.

    Per format: `max_abs` per output name (max over all shapes), `min_cosine` of embeddings,
    `argmax_agree` (fraction of rows whose head argmax matches eager), `argmax_mismatch_beyond_tie`
    (mismatches where eager's top-2 logit margin exceeds the fp32 tolerance: a real disagreement),
    and `ok` (fp32 formats: max_abs <= 1e-4 on every output and no real argmax mismatch).
    """
    directory = Path(directory)
    config = model.config
    model = model.to("cpu").eval()
    entry_points = EntryPoints(model).eval()
    outputs = entry_outputs(model.head_specs)
    lengths = (
        list(text_lengths) if text_lengths else sorted({1, min(7, config.max_text_len), config.max_text_len})
    )
    shapes = [(b, n) for b in batch_sizes for n in lengths]
    reference: dict[tuple[int, int], dict[str, list[np.ndarray]]] = {}
    for b, n in shapes:
        inputs = parity_inputs(config, b, n)
        with torch.inference_mode():
            reference[(b, n)] = {
                e: [v.numpy() for v in getattr(entry_points, e)(*[torch.from_numpy(a) for a in inputs[e]])]
                for e in ENTRY_POINTS
            }
    report: dict[str, dict[str, Any]] = {}
    for fmt in formats:
        run = _runner(directory, fmt)
        max_abs: dict[str, float] = {}
        min_cos = 1.0
        agree = total = real_mismatch = 0
        for b, n in shapes:
            inputs = parity_inputs(config, b, n)
            for entry in ENTRY_POINTS:
                got = run(entry, inputs[entry])
                for name, ref, val in zip(outputs[entry], reference[(b, n)][entry], got, strict=True):
                    if val.shape != ref.shape:
                        raise AssertionError(f"{fmt} {entry}.{name}: shape {val.shape} != eager {ref.shape}")
                    key = f"{entry}.{name}"
                    max_abs[key] = max(max_abs.get(key, 0.0), float(np.abs(val - ref).max()))
                    if name == "embedding":
                        cos = (val * ref).sum(-1) / (
                            np.linalg.norm(val, axis=-1) * np.linalg.norm(ref, axis=-1)
                        )
                        min_cos = min(min_cos, float(cos.min()))
                    if name.startswith("logits_"):
                        same = val.argmax(-1) == ref.argmax(-1)
                        top2 = np.sort(ref, axis=-1)[:, -2:] if ref.shape[-1] > 1 else np.zeros((len(ref), 2))
                        margin = top2[:, 1] - top2[:, 0]
                        agree += int(same.sum())
                        total += len(same)
                        real_mismatch += int((~same & (margin > FP32_TOLERANCE)).sum())
        worst = max(max_abs.values()) if max_abs else 0.0
        report[fmt] = {
            "shapes": [f"{b}x{n}" for b, n in shapes],
            "max_abs": max_abs,
            "max_abs_overall": worst,
            "min_cosine": min_cos,
            "argmax_agree": agree / total if total else 1.0,
            "argmax_mismatch_beyond_tie": real_mismatch,
            "ok": fmt == "onnx-int8" or (worst <= FP32_TOLERANCE and real_mismatch == 0),
        }
    return report
