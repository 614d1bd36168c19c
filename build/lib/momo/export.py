"""Export a `MoMoModel` to ONNX graphs and torch programs that `momo.runtime` serves.

What is written (file names in `momo.runtime`; every file flat in one directory, so an artifact's
manifest hashes them all):

- ``image_encoder.onnx`` (pixels -> embedding, cls, logits_<image heads>),
  ``text_encoder.onnx`` (input_ids, attention_mask -> embedding, cls, logits_<text heads>),
  ``pair_encoder.onnx`` (pixels, input_ids, attention_mask -> fused cls, logits_<pair heads>, i.e.
  itm and vqa when the artifact keeps them). Dynamic axes: batch everywhere, text length on
  ids/mask (1 … max_text_len); image size is fixed by the config. Opset 17 (native
  LayerNormalization; supported by every onnxruntime >= 1.14, including the GPU builds).
  Classifier heads are a LayerNorm + Linear on a CLS, so each is part of the graph of its input kind
  rather than a graph of its own: one session call gives embedding, CLS and all logits.
- ``encoders.onnx.data`` — ONNX external data shared by the three graphs. The three graphs run the
  same transformer, so their initializers are deduplicated by content and each distinct tensor is
  stored once (large tensors page-aligned so onnxruntime can memory-map them). This is always on,
  for every preset: momo-base's ~400 MB of weights are written once, not three times, and no graph
  hits protobuf's 2 GB limit.
- ``*.int8.onnx`` + ``encoders.int8.onnx.data`` (optional) — `onnxruntime.quantization.quantize_dynamic`
  of the fp32 graphs: int8 weights for MatMul/Gemm, activations quantised on the fly.
- ``encoders.torchscript.pt`` — one TorchScript module traced with `torch.jit.trace_module`, with
  methods ``image``, ``text``, ``pair`` (same outputs as the ONNX graphs) sharing one copy of the
  weights. TorchScript is deprecated in torch 2.13 but still works and is the format with one
  weight copy and no Python model code at load time. Where `torch.jit` fails, ``*_encoder.pt2``
  `torch.export` programs (one per entry point, so the weights are stored three times) are written
  instead (`torch_format="torch-export"`).
- ``export.json`` — what was exported from which weights/config (sha256), output names, opset,
  exporter, the sha256 of every graph file, and parity figures when checked.

ONNX exporter: `torch.onnx.export(..., dynamo=False)`, the TorchScript-based exporter. In torch 2.13
the default is the `torch.export`-based exporter, which needs the `onnxscript` package (not a
dependency here); the TorchScript-based one needs nothing extra and keeps `dynamic_axes` exactly.
Parity with eager torch is checked on batch sizes and text lengths different from the dummy
inputs used for tracing (`parity_report`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from momo.artifact import load_artifact, seal, sha256_file, update_manifest, utc_now, verify
from momo.runtime import (
    ENTRY_POINTS,
    EXPORT_FORMAT_VERSION,
    EXPORT_INFO_FILE,
    FORMATS,
    ONNX_DATA_FILES,
    ONNX_FILES,
    TORCH_EXPORT_FILES,
    TORCHSCRIPT_FILE,
    config_sha256,
    entry_outputs,
    format_files,
    read_export_info,
    weights_sha256,
)

DEFAULT_OPSET = 17
ONNX_EXPORTER = "torch.onnx.export(dynamo=False) (TorchScript-based exporter)"
EXTERNAL_THRESHOLD = 1024  # bytes: smaller tensors stay inside the graph
PAGE = 4096
FP32_TOLERANCE = 1e-4

__all__ = [
    "DEFAULT_OPSET",
    "EntryPoints",
    "ExportReport",
    "export_artifact",
    "export_model",
    "export_onnx",
    "export_torch_program",
    "load_torch_program",
    "parity_report",
    "trace_entry_points",
]


# --- the entry points every format exports ----------------------------------------------------------
class EntryPoints(nn.Module):
    """`image`, `text`, `pair` of a `MoMoModel`, returning the tuples named by `runtime.entry_outputs`.

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


class _Method(nn.Module):
    """`forward` = one entry point, for exporters that only look at `forward`."""

    def __init__(self, entry_points: EntryPoints, entry: str):
        super().__init__()
        self.entry_points = entry_points
        self.entry = entry

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        result: tuple[torch.Tensor, ...] = getattr(self.entry_points, self.entry)(*args)
        return result


INPUT_NAMES = {
    "image": ["pixels"],
    "text": ["input_ids", "attention_mask"],
    "pair": ["pixels", "input_ids", "attention_mask"],
}


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
def _quiet() -> Iterator[None]:
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


# --- ONNX ---------------------------------------------------------------------------------------------
def _tensor_bytes(tensor: Any) -> bytes:
    from onnx import numpy_helper

    if tensor.HasField("raw_data"):
        return bytes(tensor.raw_data)
    return bytes(np.ascontiguousarray(numpy_helper.to_array(tensor)).tobytes())


_DATA_FIELDS = (
    "raw_data",
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
)


def write_shared_external(
    models: dict[str, Any], directory: Path, files: dict[str, str], data_file: str
) -> dict[str, int]:
    """Save ONNX `models` (entry -> ModelProto with inline weights) as `files` in `directory`,
    moving every initializer of >= EXTERNAL_THRESHOLD bytes into one shared `data_file` in which each
    distinct tensor (same dtype, shape and bytes) appears once. Returns the size of each file."""
    import onnx
    from onnx import TensorProto

    seen: dict[tuple[int, tuple[int, ...], str], tuple[int, int]] = {}
    offset = 0
    with (directory / data_file).open("wb") as data:
        for entry in sorted(models):
            for tensor in models[entry].graph.initializer:
                raw = _tensor_bytes(tensor)
                if len(raw) < EXTERNAL_THRESHOLD:
                    continue
                key = (
                    int(tensor.data_type),
                    tuple(int(d) for d in tensor.dims),
                    hashlib.sha256(raw).hexdigest(),
                )
                if key not in seen:
                    align = PAGE if len(raw) >= 16 * PAGE else 64
                    pad = (-offset) % align
                    data.write(b"\0" * pad)
                    offset += pad
                    data.write(raw)
                    seen[key] = (offset, len(raw))
                    offset += len(raw)
                where, length = seen[key]
                for name in _DATA_FIELDS:
                    tensor.ClearField(name)
                del tensor.external_data[:]
                for key_name, value in (("location", data_file), ("offset", where), ("length", length)):
                    item = tensor.external_data.add()
                    item.key, item.value = key_name, str(value)
                tensor.data_location = TensorProto.EXTERNAL
    sizes = {data_file: (directory / data_file).stat().st_size}
    for entry, model in models.items():
        path = directory / files[entry]
        onnx.save_model(model, str(path))
        onnx.checker.check_model(str(path))  # a path: the checker also validates the external data
        sizes[files[entry]] = path.stat().st_size
    return sizes


def export_onnx(
    model: Any, directory: str | Path, *, opset: int = DEFAULT_OPSET, int8: bool = False
) -> dict[str, dict[str, Any]]:
    """Write the fp32 ONNX graphs (and, with `int8`, their dynamically quantised copies) into
    `directory`. Returns the export.json entries {"onnx": ..., ["onnx-int8": ...]}."""
    import onnx

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").eval()
    entry_points = EntryPoints(model).eval()
    outputs = entry_outputs(model.head_specs)
    inputs = dummy_inputs(model.config)
    dynamic = {
        "pixels": {0: "batch"},
        "input_ids": {0: "batch", 1: "length"},
        "attention_mask": {0: "batch", 1: "length"},
    }
    protos: dict[str, Any] = {}
    scratch = directory / f".onnx-{uuid.uuid4().hex[:8]}"
    scratch.mkdir()
    try:
        for entry in ENTRY_POINTS:
            path = scratch / f"{entry}.onnx"
            axes = {name: dynamic[name] for name in INPUT_NAMES[entry]}
            axes.update({name: {0: "batch"} for name in outputs[entry]})
            with _quiet(), torch.no_grad():
                torch.onnx.export(
                    _Method(entry_points, entry),
                    inputs[entry],
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    input_names=INPUT_NAMES[entry],
                    output_names=outputs[entry],
                    dynamic_axes=axes,
                    do_constant_folding=True,
                )
            protos[entry] = onnx.load_model(str(path))
        result: dict[str, dict[str, Any]] = {}
        sizes = write_shared_external(protos, directory, ONNX_FILES["onnx"], ONNX_DATA_FILES["onnx"])
        result["onnx"] = _onnx_entry("onnx", opset, outputs, sizes, directory)
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantised: dict[str, Any] = {}
            for entry in ENTRY_POINTS:
                target = scratch / f"{entry}.int8.onnx"
                with _quiet():
                    quantize_dynamic(
                        directory / ONNX_FILES["onnx"][entry],
                        target,
                        op_types_to_quantize=["MatMul", "Gemm"],
                        weight_type=QuantType.QInt8,
                        per_channel=False,
                    )
                quantised[entry] = onnx.load_model(str(target))
            sizes = write_shared_external(
                quantised, directory, ONNX_FILES["onnx-int8"], ONNX_DATA_FILES["onnx-int8"]
            )
            result["onnx-int8"] = _onnx_entry("onnx-int8", opset, outputs, sizes, directory)
            result["onnx-int8"]["quantization"] = "quantize_dynamic, QInt8 weights, MatMul+Gemm"
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _onnx_entry(
    fmt: str, opset: int, outputs: dict[str, list[str]], sizes: dict[str, int], directory: Path
) -> dict[str, Any]:
    return {
        "exporter": ONNX_EXPORTER,
        "opset": opset,
        "graphs": {
            e: {"file": ONNX_FILES[fmt][e], "inputs": INPUT_NAMES[e], "outputs": outputs[e]}
            for e in ENTRY_POINTS
        },
        "dynamic_axes": {"batch": "all inputs and outputs", "length": "input_ids, attention_mask"},
        "bytes": sizes,
        "sha256": {name: sha256_file(directory / name) for name in format_files(fmt)},
    }


# --- torch programs -----------------------------------------------------------------------------------
def trace_entry_points(model: Any) -> torch.jit.ScriptModule:
    """One TorchScript module with methods image/text/pair, traced on the model's device."""
    device = next(model.parameters()).device
    entry_points = EntryPoints(model.eval()).eval()
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace_module(entry_points, dummy_inputs(model.config, device), check_trace=False)
    return traced


class _ExportedPrograms:
    """The three `torch.export` programs behind the same `image`/`text`/`pair` interface."""

    momo_format = "torch-export"

    def __init__(self, modules: dict[str, Callable[..., Any]]):
        self.image = modules["image"]
        self.text = modules["text"]
        self.pair = modules["pair"]


def export_torch_program(
    model: Any, directory: str | Path, *, torch_format: str = "torchscript"
) -> dict[str, dict[str, Any]]:
    """Write the TorchScript module (or, with torch_format="torch-export", `torch.export` programs)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").eval()
    outputs = entry_outputs(model.head_specs)
    if torch_format == "torchscript":
        traced = trace_entry_points(model)
        with _quiet():
            torch.jit.save(traced, str(directory / TORCHSCRIPT_FILE))
        method = "torch.jit.trace_module (methods image, text, pair; one copy of the weights)"
    elif torch_format == "torch-export":
        entry_points = EntryPoints(model).eval()
        inputs = dummy_inputs(model.config)
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        length = torch.export.Dim("length", min=1, max=model.config.max_text_len)
        shapes: dict[str, tuple[dict[int, Any], ...]] = {
            "image": ({0: batch},),
            "text": ({0: batch, 1: length}, {0: batch, 1: length}),
            "pair": ({0: batch}, {0: batch, 1: length}, {0: batch, 1: length}),
        }
        with _quiet():
            for entry in ENTRY_POINTS:
                program = torch.export.export(
                    _Method(entry_points, entry), inputs[entry], dynamic_shapes=(shapes[entry],)
                )
                torch.export.save(program, str(directory / TORCH_EXPORT_FILES[entry]))
        method = "torch.export.export with dynamic batch/length (one program per entry point)"
    else:
        raise ValueError(f"torch_format must be 'torchscript' or 'torch-export', not {torch_format!r}")
    return {
        torch_format: {
            "method": method,
            "outputs": outputs,
            "inputs": INPUT_NAMES,
            "torch_version": torch.__version__,
            "bytes": {name: (directory / name).stat().st_size for name in format_files(torch_format)},
            "sha256": {name: sha256_file(directory / name) for name in format_files(torch_format)},
        }
    }


def load_torch_program(directory: str | Path, torch_format: str = "torchscript", device: str = "cpu") -> Any:
    """An object with `image`, `text`, `pair` methods from the program files in `directory`."""
    directory = Path(directory)
    with _quiet():
        if torch_format == "torchscript":
            return torch.jit.load(str(directory / TORCHSCRIPT_FILE), map_location=device).eval()
        if torch_format == "torch-export":
            return _ExportedPrograms(
                {e: torch.export.load(str(directory / f)).module() for e, f in TORCH_EXPORT_FILES.items()}
            )
    raise ValueError(f"unknown torch program format {torch_format!r}")


# --- everything ---------------------------------------------------------------------------------------
def export_model(
    model: Any,
    directory: str | Path,
    *,
    formats: Iterable[str] = ("onnx", "torchscript"),
    weights_sha256: str,
    config_sha256: str,
    opset: int = DEFAULT_OPSET,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export `formats` ("onnx", "onnx-int8", "torchscript", "torch-export") into `directory` and write
    its `export.json`. `previous`: an export.json whose other format entries are kept."""
    directory = Path(directory)
    wanted = list(dict.fromkeys(formats))
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export formats {unknown}; known: {', '.join(FORMATS)}")
    entries: dict[str, Any] = {}
    if "onnx" in wanted or "onnx-int8" in wanted:
        entries.update(export_onnx(model, directory, opset=opset, int8="onnx-int8" in wanted))
    for torch_format in ("torchscript", "torch-export"):
        if torch_format in wanted:
            entries.update(export_torch_program(model, directory, torch_format=torch_format))
    kept = {}
    if (
        previous
        and previous.get("weights_sha256") == weights_sha256
        and previous.get("format_version") == EXPORT_FORMAT_VERSION
    ):
        kept = {k: v for k, v in previous.get("formats", {}).items() if k not in entries}
    info = {
        "format_version": EXPORT_FORMAT_VERSION,
        "weights_sha256": weights_sha256,
        "config_sha256": config_sha256,
        "created_at": utc_now(),
        "torch_version": torch.__version__,
        "heads": {n: s.input for n, s in sorted(model.head_specs.items())},
        "formats": {**kept, **{k: entries[k] for k in wanted}},
    }
    (directory / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


# --- parity -------------------------------------------------------------------------------------------
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


# --- into an artifact ---------------------------------------------------------------------------------
@dataclass
class ExportReport:
    directory: Path
    files: dict[str, int] = field(default_factory=dict)  # file name -> bytes
    formats: list[str] = field(default_factory=list)
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def parity_ok(self) -> bool:
        return all(entry.get("ok", True) for entry in self.parity.values())


def export_artifact(
    directory: str | Path,
    *,
    onnx: bool = True,
    int8: bool = False,
    torchscript: bool = True,
    torch_format: str = "torchscript",
    check_parity: bool = False,
    opset: int = DEFAULT_OPSET,
    batch_sizes: Sequence[int] = (1, 3, 17),
) -> ExportReport:
    """Export into an artifact directory and record the new files in its manifest.

    Graphs are written into a hidden scratch directory inside the artifact first; with
    `check_parity`, a fp32 parity failure stops here and the artifact is left untouched. Then the
    files are moved in (export.json last) and `update_manifest` re-seals the manifest with their
    sha256s and an `export` note (formats, sizes, parity)."""
    directory = Path(directory)
    artifact = load_artifact(directory)
    model = artifact.load_model("cpu")
    formats = [f for f, on in (("onnx", onnx), ("onnx-int8", int8), (torch_format, torchscript)) if on]
    if not formats:
        raise ValueError("nothing to export: enable ONNX, int8 or a torch program")
    scratch = directory / f".export-{uuid.uuid4().hex[:8]}"
    scratch.mkdir()
    try:
        previous = read_export_info(directory)
        if previous:  # keep only earlier formats whose files are still there
            previous["formats"] = {
                k: v
                for k, v in previous.get("formats", {}).items()
                if k in FORMATS and all((directory / f).is_file() for f in format_files(k))
            }
        info = export_model(
            model,
            scratch,
            formats=formats,
            weights_sha256=weights_sha256(artifact),
            config_sha256=config_sha256(artifact),
            opset=opset,
            previous=previous,
        )
        report = ExportReport(directory, formats=formats)
        for fmt in formats:
            report.files.update(info["formats"][fmt]["bytes"])
        if check_parity:
            report.parity = parity_report(model, scratch, formats, batch_sizes=batch_sizes)
            for fmt, figures in report.parity.items():
                info["formats"][fmt]["parity"] = figures
            (scratch / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            if not report.parity_ok:
                return report
        summary = {
            "formats": sorted(info["formats"]),
            "created_at": info["created_at"],
            "bytes": report.files,
            "parity": {
                k: {"max_abs": v["max_abs_overall"], "argmax_agree": v["argmax_agree"]}
                for k, v in report.parity.items()
            },
        }
        replaced = [n for n in [*report.files, EXPORT_INFO_FILE] if n in artifact.manifest.files]
        if not replaced:
            for name in report.files:
                os.replace(scratch / name, directory / name)
            os.replace(scratch / EXPORT_INFO_FILE, directory / EXPORT_INFO_FILE)
            update_manifest(directory, notes={"export": summary})
        else:
            # Re-export over files the manifest already lists: `update_manifest` (rightly) refuses a
            # directory whose listed files changed, so verify first, swap the files, then re-seal.
            manifest = verify(directory)
            for name in report.files:
                os.replace(scratch / name, directory / name)
            os.replace(scratch / EXPORT_INFO_FILE, directory / EXPORT_INFO_FILE)
            manifest.notes["export"] = summary
            seal(directory, manifest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.files[EXPORT_INFO_FILE] = (directory / EXPORT_INFO_FILE).stat().st_size
    return report
