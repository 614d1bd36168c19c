"""Export graphs into an artifact and record them in its manifest (the library of `momo export`).

What is written and how is described where it is done: the file layout and `export.json` in
`momo.graphs`, the ONNX graphs in `momo.onnx_export`, the TorchScript / `torch.export` programs in
`momo.torch_programs`, the parity figures in `momo.parity`; `momo.graph_writer.export_model`
combines them. This module adds the artifact side: a scratch directory inside the artifact, an
optional parity gate, then the files moved in and the manifest re-sealed.

The runtime never imports this module: it fills its graph cache through the `GraphExporter` it is
given (`momo.graph_writer.export_graphs` by default).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from momo.artifact import load_artifact, seal, update_manifest, verify
from momo.entry_points import EntryPoints
from momo.graph_writer import export_model
from momo.graphs import (
    EXPORT_INFO_FILE,
    FORMATS,
    config_sha256,
    format_files,
    read_export_info,
    weights_sha256,
    write_export_info,
)
from momo.onnx_export import DEFAULT_OPSET, export_onnx
from momo.parity import parity_inputs, parity_report
from momo.torch_programs import export_torch_program, load_torch_program, trace_entry_points

__all__ = [  # the entry points' and exporters' public names stay importable from here
    "DEFAULT_OPSET",
    "EntryPoints",
    "ExportReport",
    "export_artifact",
    "export_model",
    "export_onnx",
    "export_torch_program",
    "load_torch_program",
    "parity_inputs",
    "parity_report",
    "trace_entry_points",
]


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
            write_export_info(scratch, info)
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
