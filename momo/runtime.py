"""Inference runtimes: one interface over ONNX Runtime and torch (eager or TorchScript).

The service and the evaluation suite call a `Runtime` with *preprocessed numpy arrays* (pixels from
`momo.preprocess.preprocess_images`, ids/mask from `artifact.tokenizer.encode_batch`) and get numpy
arrays back, whatever the backend:

    runtime = load_runtime("momo-tiny:v1", kind="onnx")          # or kind="torch" / "onnx-int8"
    emb = runtime.encode_images(pixels)                          # (B, C, H, W) f32 -> (B, E) unit-norm
    emb = runtime.encode_texts(batch.input_ids, batch.attention_mask)      # (B, L) i64 -> (B, E)
    p = runtime.score_pairs(pixels, ids, mask)                   # (B,) ITM match probability
    logits = runtime.head_logits("fashion", pixels=pixels)       # (B, n_labels)
    answers = runtime.answer(pixels, ids, mask, top_k=5)         # VQA head "vqa"

Every backend runs the same three *entry points* (`momo.entry_points.EntryPoints`), whose named
outputs are fixed by `momo.graphs.entry_outputs`:

- ``image(pixels)``                  -> embedding (B, E), cls (B, D), logits_<head> for image heads
- ``text(input_ids, attention_mask)`` -> embedding (B, E), cls (B, D), logits_<head> for text heads
- ``pair(pixels, ids, mask)``         -> cls (B, D) fused CLS, logits_<head> for pair heads (itm, vqa)

Classifier heads are tiny (LayerNorm + Linear over a CLS), so each lives inside the entry point of its
input kind: one graph call yields embedding, CLS and every head's logits.

Derived graphs (format in `momo.graphs`) are looked up in the artifact directory first; when the
artifact has none (a fine-tuned version before `momo export`, and a Docker store may be read-only)
`momo.graphs.ensure_graphs` has them exported once into a cache directory,
`<cache root>/<sha256 of model.safetensors>/`, where the cache root is `cache_dir`, else
`$MOMO_CACHE_DIR`, else `~/.cache/momo`. The exporter is passed in (`exporter=`): by default
`export_with_torch`, which imports torch and onnx only when it runs; `exporter=None` never exports
and fails with a clear error instead. This module never imports `momo.export`; with graphs present
the ONNX path needs just numpy, tokenizers and onnxruntime (no torch: a test checks it).

Note on length (~530 lines): the interface (with the validation and post-processing every backend
shares), its two backends and the factory are one module. Splitting it means four modules
(interface, ONNX backend, torch backend, factory): a backend module beside the factory alone would
import the factory's module for the interface while the factory imports it, a circle the
import-boundary test forbids.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from momo.artifact import Artifact, load_artifact
from momo.graphs import ONNX_FILES, GraphExporter, RuntimeLoadError, ensure_graphs, entry_outputs
from momo.store import ModelStore

__all__ = [
    "RUNTIME_KINDS",
    "OnnxRuntime",
    "Runtime",
    "RuntimeLoadError",
    "TorchRuntime",
    "export_with_torch",
    "load_runtime",
]

RUNTIME_KINDS = ("onnx", "onnx-int8", "torch")


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


# --- ONNX Runtime ------------------------------------------------------------------------------------
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


# --- torch ---------------------------------------------------------------------------------------------
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


# --- factory -------------------------------------------------------------------------------------------
def load_runtime(
    reference: str | Path | Artifact | None = None,
    kind: str = "onnx",
    *,
    store: ModelStore | None = None,
    device: str = "auto",
    threads: int | None = None,
    torchscript: bool = False,
    cache_dir: Path | None = None,
    warmup: bool = True,
    exporter: GraphExporter | None = export_with_torch,
) -> Runtime:
    """Load a runtime for a store reference ("name", "name:version", "active"/None, a directory path)
    or an already loaded `Artifact`.

    kind: "onnx" (ONNX Runtime fp32), "onnx-int8" (dynamically quantised graphs), "torch" (eager,
    or TorchScript with `torchscript=True`; "torchscript" is accepted as a shorthand).
    device: "auto" (CUDA when the backend has it, else CPU), "cpu" or "cuda".
    threads: intra-op threads (ONNX Runtime per session; torch process-wide); None = backend default.
    cache_dir, exporter: where missing graphs are cached and what exports them (None: never export).
    The runtime is warmed up before it is returned unless `warmup=False`.
    """
    if isinstance(reference, Artifact):
        artifact = reference
    else:
        store = store if store is not None else ModelStore()
        if reference is not None and (Path(reference) / "manifest.json").is_file():
            artifact = load_artifact(reference)
        else:
            artifact = store.load(None if reference is None else str(reference))
    if kind == "torchscript":
        kind, torchscript = "torch", True
    runtime: Runtime
    if kind in ("onnx", "onnx-int8"):
        runtime = OnnxRuntime(
            artifact,
            device=device,
            threads=threads,
            int8=kind == "onnx-int8",
            cache_dir=cache_dir,
            exporter=exporter,
        )
    elif kind == "torch":
        runtime = TorchRuntime(
            artifact,
            device=device,
            threads=threads,
            torchscript=torchscript,
            cache_dir=cache_dir,
            exporter=exporter,
        )
    else:
        raise ValueError(f"unknown runtime kind {kind!r}; known: {', '.join(RUNTIME_KINDS)}, torchscript")
    if warmup:
        runtime.warmup()
    return runtime
