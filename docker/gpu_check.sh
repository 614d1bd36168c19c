#!/usr/bin/env bash
# Run the GPU paths once on the bundled (active) model and say what ran where:
# ONNX Runtime with the CUDA execution provider, and torch on CUDA — each compared with the CPU run.
#
#   docker run --rm --gpus all momo-api:0.1.0-gpu bash /opt/momo/gpu_check.sh     # in the GPU image
#   MOMO_MODEL_STORE=model_store PYTHON=/path/to/gpu-venv/bin/python bash docker/gpu_check.sh  # checkout
#
# Needs torch with CUDA and onnxruntime-gpu in the python on PATH (or $PYTHON). Prints one line per
# check and a JSON summary; exit 0 only when both CUDA paths ran on the GPU and match the CPU.
# MOMO_GPU_CHECK_TOL (default 2e-3): max |difference| of unit-norm embeddings, GPU vs CPU.
set -euo pipefail
PYTHON="${PYTHON:-python}"

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
else
  echo "nvidia-smi: not on PATH (the driver's tools are mounted by the NVIDIA Container Toolkit)"
fi

exec "$PYTHON" - <<'EOF'
import json
import os
import sys
import time

import numpy as np

summary = {"ok": False}
tol = float(os.environ.get("MOMO_GPU_CHECK_TOL", "2e-3"))
try:
    import onnxruntime as ort
    import torch

    from momo.runtime import load_runtime
    from momo.store import ModelStore

    summary["torch"] = torch.__version__
    summary["torch_cuda"] = torch.version.cuda
    summary["cuda_available"] = torch.cuda.is_available()
    summary["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    summary["onnxruntime"] = ort.__version__
    summary["ort_providers_available"] = ort.get_available_providers()
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), cuda available: {torch.cuda.is_available()}"
          f", device: {summary['device']}")
    print(f"onnxruntime {ort.__version__}, providers available: {ort.get_available_providers()}")

    store = ModelStore()
    artifact = store.load()
    summary["model"] = artifact.reference
    config = artifact.config
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((8, config.num_channels, config.image_size, config.image_size)).astype(
        np.float32
    )
    texts = ["a red circle left of a blue square", "a photo of a sneaker", "how many shapes are there"] * 3
    batch = artifact.tokenizer.encode_batch(texts, max_length=config.max_text_len)

    def run(kind, device):
        start = time.perf_counter()
        runtime = load_runtime(artifact, kind=kind, device=device)
        img = runtime.encode_images(pixels)
        txt = runtime.encode_texts(batch.input_ids, batch.attention_mask)
        info = runtime.describe()
        runtime.close()
        return img, txt, info, time.perf_counter() - start

    ref_img, ref_txt, _, _ = run("torch", "cpu")
    results = {}
    for kind in ("onnx", "torch"):
        name = f"{kind}-cuda"
        try:
            img, txt, info, seconds = run(kind, "cuda")
        except Exception as exc:  # report and go on with the other path
            results[name] = {"ran": False, "error": f"{type(exc).__name__}: {exc}"}
            print(f"{name}: FAILED {type(exc).__name__}: {exc}")
            continue
        diff = float(max(np.abs(img - ref_img).max(), np.abs(txt - ref_txt).max()))
        on_gpu = info.get("device") == "cuda" and (
            kind != "onnx" or info.get("providers", [""])[0] == "CUDAExecutionProvider"
        )
        results[name] = {
            "ran": True,
            "on_gpu": on_gpu,
            "describe": info,
            "max_abs_diff_vs_cpu": diff,
            "load_and_run_s": round(seconds, 3),
        }
        print(f"{name}: device={info.get('device')} providers={info.get('providers', '-')} "
              f"max|diff| vs CPU={diff:.2e} ({seconds:.2f}s incl. load)")
    summary["checks"] = results
    summary["ok"] = all(r.get("ran") and r.get("on_gpu") and r["max_abs_diff_vs_cpu"] <= tol
                        for r in results.values())
except Exception as exc:
    summary["error"] = f"{type(exc).__name__}: {exc}"
    print(f"error: {summary['error']}")
print(json.dumps(summary, indent=2, default=str))
sys.exit(0 if summary["ok"] else 1)
EOF
