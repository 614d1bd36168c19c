"""`TorchRuntime`: the `Runtime` over torch, eager (`EntryPoints` of the `MoMoModel`) or a
TorchScript / torch.export program. torch is imported when one is built, never at import time, so
`momo.runtime` stays importable without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from momo.artifact import Artifact
from momo.graphs import GraphExporter, RuntimeLoadError, ensure_graphs
from momo.runtime_base import Runtime, export_with_torch

__all__ = ["TorchRuntime"]


class TorchRuntime(Runtime):
    """torch eager (the `MoMoModel` itself) or a TorchScript program, under `torch.inference_mode`.

    A TorchScript trace bakes the device of tensors created inside the model, so the stored program
    (traced on CPU) serves CPU; on CUDA the program is traced on the GPU at load time instead.
    """

    def __init__(
        self,
        artifact: Artifact,
        *,
        device: str = "auto",
        threads: int | None = None,
        torchscript: bool = False,
        cache_dir: Path | None = None,
        exporter: GraphExporter | None = export_with_torch,
    ):
        """`torchscript`: run the stored (CPU) or freshly traced (CUDA) TorchScript program instead of
        the eager model; `cache_dir`, `exporter`: where and how a missing program is exported."""
        import torch

        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeLoadError("device='cuda' asked but torch sees no CUDA device")
        resolved = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
        if threads:
            torch.set_num_threads(int(threads))  # process-wide in torch
        super().__init__(artifact, "torch", resolved)
        self.torchscript = torchscript
        self._torch = torch
        self._device = torch.device(resolved)
        from momo.entry_points import EntryPoints
        from momo.torch_programs import load_torch_program, trace_entry_points

        model = artifact.load_model(resolved)
        self.graph_dir: Path | None = None
        if not torchscript:
            self.program: Any = EntryPoints(model).eval()
        elif resolved == "cuda":
            self.program = trace_entry_points(model)
        else:
            try:
                self.graph_dir = ensure_graphs(artifact, "torchscript", cache_dir, exporter)
                self.program = load_torch_program(self.graph_dir, "torchscript")
            except RuntimeLoadError:
                raise
            except Exception as exc:  # TorchScript unavailable: fall back to torch.export programs
                try:
                    self.graph_dir = ensure_graphs(artifact, "torch-export", cache_dir, exporter)
                    self.program = load_torch_program(self.graph_dir, "torch-export")
                except Exception as inner:
                    raise RuntimeLoadError(
                        f"no TorchScript ({exc}) nor torch.export ({inner}) program"
                    ) from inner
        self.program_format = (
            "eager" if not torchscript else getattr(self.program, "momo_format", "torchscript")
        )

    def _run(self, entry: str, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(self._device) for a in inputs]
        with torch.inference_mode():
            values = getattr(self.program, entry)(*tensors)
        return {
            name: value.float().cpu().numpy() for name, value in zip(self.outputs[entry], values, strict=True)
        }

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "program": self.program_format}

    def close(self) -> None:
        super().close()
        self.program = None
        if self.device == "cuda":
            self._torch.cuda.empty_cache()
