"""Write exported graphs into a directory: every asked-for format plus its `export.json`.

`export_model` is the one place that combines the ONNX exporter (`momo.onnx_export`) and the torch
programs (`momo.torch_programs`) into the format `momo.graphs` describes. Two callers use it:
`momo.export.export_artifact` (graphs installed into an artifact, `momo export`) and
`export_graphs`, the `momo.graphs.GraphExporter` that fills the runtime's graph cache. This module
imports torch; nothing on the ONNX serving path imports it unless graphs must be exported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from momo import graphs
from momo.artifact import Artifact, utc_now
from momo.graphs import EXPORT_FORMAT_VERSION, FORMATS, write_export_info
from momo.onnx_export import DEFAULT_OPSET, export_onnx
from momo.torch_programs import export_torch_program

__all__ = ["export_graphs", "export_model"]


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
    write_export_info(directory, info)
    return info


def export_graphs(artifact: Artifact, directory: Path, formats: Sequence[str]) -> None:
    """The `GraphExporter` of the runtime's cache: `formats` of `artifact`'s graphs into `directory`."""
    export_model(
        artifact.load_model("cpu"),
        directory,
        formats=formats,
        weights_sha256=graphs.weights_sha256(artifact),
        config_sha256=graphs.config_sha256(artifact),
    )
