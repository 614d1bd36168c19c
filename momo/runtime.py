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

Modules: the interface and what every backend shares in `momo.runtime_base`, the backends in
`momo.onnx_runtime` and `momo.torch_runtime`; this module is the factory and the public names.

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
and fails with a clear error instead. No runtime module imports `momo.export`; with graphs present
the ONNX path needs just numpy, tokenizers and onnxruntime (no torch: a test checks it).
"""

from __future__ import annotations

from pathlib import Path

from momo.artifact import Artifact, load_artifact
from momo.graphs import GraphExporter, RuntimeLoadError
from momo.onnx_runtime import OnnxRuntime
from momo.runtime_base import Runtime, export_with_torch
from momo.store import ModelStore
from momo.torch_runtime import TorchRuntime

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
