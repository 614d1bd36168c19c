"""`OnnxRuntime`: the `Runtime` over ONNX Runtime sessions of the exported graphs (fp32 or int8).

The CUDA provider comes first when onnxruntime offers it, then CPU. With the graphs present this
path needs numpy, tokenizers and onnxruntime only: no torch (`tests/test_import_boundaries.py`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from momo.artifact import Artifact
from momo.graphs import ONNX_FILES, GraphExporter, RuntimeLoadError, ensure_graphs
from momo.runtime_base import Runtime, export_with_torch

__all__ = ["OnnxRuntime"]


class OnnxRuntime(Runtime):
    """ONNX Runtime sessions over the exported graphs: CUDA provider first when present, then CPU."""

    def __init__(
        self,
        artifact: Artifact,
        *,
        device: str = "auto",
        threads: int | None = None,
        int8: bool = False,
        cache_dir: Path | None = None,
        spin: bool | None = None,
        exporter: GraphExporter | None = export_with_torch,
    ):
        """`spin`: let ONNX Runtime's pool threads busy-wait between ops (default: `$MOMO_ORT_SPIN`,
        off). `cache_dir`, `exporter`: where and how missing graphs are exported (`ensure_graphs`)."""
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is in the serve and train extras
            raise RuntimeLoadError("kind='onnx' needs the onnxruntime package") from exc
        fmt = "onnx-int8" if int8 else "onnx"
        available = ort.get_available_providers()
        has_cuda = "CUDAExecutionProvider" in available
        if device == "cuda" and not has_cuda:
            raise RuntimeLoadError(f"device='cuda' asked but onnxruntime offers only {available}")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
        use_cuda = device == "cuda" or (device == "auto" and has_cuda)
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        )
        directory = ensure_graphs(artifact, fmt, cache_dir, exporter)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3  # errors only (int8 graphs warn about CPU fallbacks on CUDA)
        if spin is None:
            spin = os.environ.get("MOMO_ORT_SPIN", "0").lower() in ("1", "true", "yes")
        if not spin:
            # Busy-waiting pool threads win a little latency on an idle dedicated machine but burn
            # cores that the other sessions (image/text/pair), the event loop and other processes
            # need; measured on 2 shared cores, no spinning was up to 1.7x faster.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.graph_dir = directory
        self.sessions: dict[str, Any] = {}
        try:
            for entry, name in ONNX_FILES[fmt].items():
                self.sessions[entry] = ort.InferenceSession(
                    str(directory / name), options, providers=providers
                )
        except Exception as exc:
            raise RuntimeLoadError(f"cannot load {fmt} graphs from {directory}: {exc}") from exc
        actual = self.sessions["image"].get_providers()
        # onnxruntime-gpu lists CUDA even on a machine without a usable GPU and then falls back.
        super().__init__(artifact, fmt, "cuda" if "CUDAExecutionProvider" in actual else "cpu")
        self.providers = actual
        self._input_names = {e: [i.name for i in s.get_inputs()] for e, s in self.sessions.items()}
        self._output_names = {e: [o.name for o in s.get_outputs()] for e, s in self.sessions.items()}
        for entry, names in self.outputs.items():
            if self._output_names[entry] != names:
                graph = directory / ONNX_FILES[fmt][entry]
                raise RuntimeLoadError(f"{graph} outputs {self._output_names[entry]}, expected {names}")

    def _run(self, entry: str, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        feeds = dict(zip(self._input_names[entry], inputs, strict=True))
        values = self.sessions[entry].run(None, feeds)
        return dict(zip(self._output_names[entry], values, strict=True))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "providers": self.providers, "graphs": str(self.graph_dir)}

    def close(self) -> None:
        super().close()
        self.sessions.clear()
