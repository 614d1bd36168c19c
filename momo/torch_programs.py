"""TorchScript and `torch.export` programs of the entry points (file names in `momo.graphs`).

- ``encoders.torchscript.pt`` — one TorchScript module traced with `torch.jit.trace_module`, with
  methods ``image``, ``text``, ``pair`` (the same outputs as the ONNX graphs) sharing one copy of
  the weights. TorchScript is deprecated in torch 2.13 but still works and is the format with one
  weight copy and no Python model code at load time.
- ``*_encoder.pt2`` — where `torch.jit` fails, `torch.export` programs (one per entry point, so the
  weights are stored three times), written with `torch_format="torch-export"`.

`load_torch_program` gives back an object with `image`/`text`/`pair` methods for either format;
the torch runtime and the parity checks run it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from momo.entry_points import EntryMethod, EntryPoints, dummy_inputs, quiet_exporters
from momo.graphs import (
    ENTRY_POINTS,
    INPUT_NAMES,
    TORCH_EXPORT_FILES,
    TORCHSCRIPT_FILE,
    entry_outputs,
    file_hashes,
    format_files,
)

__all__ = ["export_torch_program", "load_torch_program", "trace_entry_points"]


def trace_entry_points(model: Any) -> torch.jit.ScriptModule:
    """One TorchScript module with methods image/text/pair, traced on the model's device."""
    device = next(model.parameters()).device
    entry_points = EntryPoints(model.eval()).eval()
    with quiet_exporters(), torch.no_grad():
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
        with quiet_exporters():
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
        with quiet_exporters():
            for entry in ENTRY_POINTS:
                program = torch.export.export(
                    EntryMethod(entry_points, entry), inputs[entry], dynamic_shapes=(shapes[entry],)
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
            "sha256": file_hashes(directory, torch_format),
        }
    }


def load_torch_program(directory: str | Path, torch_format: str = "torchscript", device: str = "cpu") -> Any:
    """An object with `image`, `text`, `pair` methods from the program files in `directory`."""
    directory = Path(directory)
    with quiet_exporters():
        if torch_format == "torchscript":
            return torch.jit.load(str(directory / TORCHSCRIPT_FILE), map_location=device).eval()
        if torch_format == "torch-export":
            return _ExportedPrograms(
                {e: torch.export.load(str(directory / f)).module() for e, f in TORCH_EXPORT_FILES.items()}
            )
    raise ValueError(f"unknown torch program format {torch_format!r}")
