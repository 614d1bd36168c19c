"""Export a `MoMoModel` to the three ONNX graphs `momo.runtime` serves (file names in `momo.graphs`).

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

Exporter: `torch.onnx.export(..., dynamo=False)`, the TorchScript-based exporter. In torch 2.13 the
default is the `torch.export`-based exporter, which needs the `onnxscript` package (not a dependency
here); the TorchScript-based one needs nothing extra and keeps `dynamic_axes` exactly.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from momo.entry_points import EntryMethod, EntryPoints, dummy_inputs, quiet_exporters
from momo.graphs import (
    ENTRY_POINTS,
    INPUT_NAMES,
    ONNX_DATA_FILES,
    ONNX_FILES,
    entry_outputs,
    file_hashes,
)

__all__ = ["DEFAULT_OPSET", "ONNX_EXPORTER", "export_onnx", "write_shared_external"]

DEFAULT_OPSET = 17
ONNX_EXPORTER = "torch.onnx.export(dynamo=False) (TorchScript-based exporter)"
EXTERNAL_THRESHOLD = 1024  # bytes: smaller tensors stay inside the graph
PAGE = 4096


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
            with quiet_exporters(), torch.no_grad():
                torch.onnx.export(
                    EntryMethod(entry_points, entry),
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
                with quiet_exporters():
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
        "sha256": file_hashes(directory, fmt),
    }
