"""The evaluation suite: the paper's three groups on held-out (test) splits, with baselines.

Tasks live by group in `vision`, `language` and `multimodal`; this module runs them. Each group's
macro average uses its paper protocol (`common.PAPER_PROTOCOLS`): linear probes for vision,
fine-tuning for language, zero-shot retrieval and the pretrained VQA / ITM heads for multimodal.
Frozen-feature figures (probes on the CLS and on the served embedding) are reported beside them.

Beside every figure, in the same run: the same preset with random weights (all tasks; fine-tuned the
same way for the fine-tune protocol), a trivial baseline (majority class / chance / majority answer /
unigram) and a feature baseline where one applies (raw-pixel logistic regression, TF-IDF + logistic
regression). Features come from a `momo.runtime.Runtime` (ONNX Runtime by default); fine-tuning and
the MLM loss use the artifact's torch weights. Subsets are drawn with a fixed seed and every row
records how many items it used.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from momo.artifact import Artifact
from momo.runtime import Runtime
from training.evaluation.common import (
    PAPER_PROTOCOLS,
    EvalResult,
    EvalSettings,
    Row,
    TaskSkipped,
)
from training.evaluation.extractor import Extractor
from training.evaluation.language import task_fortunes, task_mlm, task_wordnet
from training.evaluation.multimodal import (
    task_clipart_retrieval,
    task_emoji_retrieval,
    task_itm,
    task_shapes_retrieval,
    task_vqa,
)
from training.evaluation.vision import task_clipart, task_fashion

RANDOM_INIT_SEED_OFFSET = 1_000_003

TASKS: dict[str, tuple[str, Callable[[Extractor, EvalSettings], list[Row]]]] = {
    "fashion_mnist": ("vision", task_fashion),
    "clipart": ("vision", task_clipart),
    "wordnet": ("language", task_wordnet),
    "fortunes": ("language", task_fortunes),
    "heldout_mlm": ("language", task_mlm),
    "shapes_retrieval": ("multimodal", task_shapes_retrieval),
    "emoji_retrieval": ("multimodal", task_emoji_retrieval),
    "clipart_retrieval": ("multimodal", task_clipart_retrieval),
    "shapes_vqa": ("multimodal", task_vqa),
    "heldout_itm": ("multimodal", task_itm),
}

__all__ = [
    "PAPER_PROTOCOLS",
    "TASKS",
    "EvalResult",
    "EvalSettings",
    "Row",
    "TaskSkipped",
    "evaluate",
    "random_init_artifact",
]


# --- driver --------------------------------------------------------------------------------------
def random_init_artifact(artifact: Artifact, directory: Path, seed: int = 0) -> Path:
    """The same preset, heads and tokenizer with freshly initialised weights, saved under `directory`."""
    import torch

    from momo.artifact import Manifest, save_artifact
    from momo.model import MoMoModel

    torch.manual_seed(RANDOM_INIT_SEED_OFFSET + seed)  # never the seed a test/random artifact used
    model = MoMoModel(
        artifact.config,
        head_specs=dict(artifact.heads.heads),
        temperature=artifact.heads.temperature,
        with_token_head=artifact.heads.token_head,
    )
    path = directory / "random-init"
    save_artifact(
        path,
        model.eval(),
        artifact.tokenizer,
        Manifest(name=f"{artifact.manifest.name}-random-init", version="v0", recipe={"seed": seed}),
    )
    return path


def evaluate(
    artifact: Artifact,
    settings: EvalSettings,
    *,
    kind: str = "onnx",
    threads: int | None = None,
    cache_dir: Path | None = None,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> EvalResult:
    """Run every task of `settings.groups` for `artifact` (and its random-weights twin)."""
    from momo.artifact import utc_now
    from momo.runtime import load_runtime

    result = EvalResult(model=artifact.reference, runtime=kind, settings=_settings_dict(settings))
    with tempfile.TemporaryDirectory(prefix="momo-eval-") as tmp:
        runtimes: dict[str, Runtime] = {
            "model": load_runtime(artifact, kind, device=device, threads=threads, cache_dir=cache_dir)
        }
        if settings.random_baseline:
            random_path = random_init_artifact(artifact, Path(tmp), settings.seed)
            runtimes["random_init"] = load_runtime(
                random_path, kind, device=device, threads=threads, cache_dir=Path(tmp) / "cache"
            )
        result.runtime = f"{kind} ({runtimes['model'].device})"
        extractor = Extractor(runtimes, settings)
        tasks = [(name, fn) for name, (group, fn) in TASKS.items() if group in settings.groups]
        with tqdm(tasks, desc="eval", disable=not settings.progress, unit="task") as bar:
            for name, fn in bar:
                bar.set_postfix_str(name)
                start = time.perf_counter()
                try:
                    result.rows.extend(fn(extractor, settings))
                except TaskSkipped as exc:
                    result.skipped.append({"task": name, "reason": str(exc)})
                    log(f"skipped {name}: {exc}")
                result.seconds[name] = round(time.perf_counter() - start, 2)
        for runtime in runtimes.values():
            runtime.close()
    result.evaluated_at = utc_now()
    result.compute_macro()
    return result


def _settings_dict(settings: EvalSettings) -> dict[str, Any]:
    data = asdict(settings)
    data["data_dir"] = str(settings.data_dir)
    data["groups"] = list(settings.groups)
    data.pop("progress", None)
    return data
