"""Register a fine-tuned model as the next version of a name: manifest (parent, recipe, data,
validation metrics), atomic `ModelStore.register`, and ONNX graphs exported into the new version."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.finetune.options import EventFn, FinetuneOptions, FinetuneResult

if TYPE_CHECKING:
    from momo.model import MoMoModel

__all__ = ["register_result"]


def register_result(
    store: Any,
    artifact: Any,
    model: MoMoModel,
    dataset: Path,
    options: FinetuneOptions,
    result: FinetuneResult,
    *,
    export_onnx: bool = True,
    emit: EventFn | None = None,
) -> str:
    """Write the fine-tuned model as the next version of `options.output_name` (default: the base's
    name) through `ModelStore.register` (atomic), with ONNX graphs when `export_onnx`."""
    from momo.artifact import Manifest, save_artifact

    name = options.output_name or artifact.manifest.name
    hyper = {k: v for k, v in asdict(options).items() if k not in ("output_name", "export_onnx", "device")}
    manifest = Manifest(
        name=name,
        parent=artifact.reference,
        recipe={
            "finetune": {
                "task": options.task,
                "base": artifact.reference,
                "head": result.head,
                "hyperparameters": hyper,
                "steps": result.steps,
                "epochs_run": round(result.epochs_run, 3),
                "stopped_early": result.stopped_early,
                "wall_seconds": round(result.wall_seconds, 1),
            }
        },
        data={
            "path": str(dataset),
            "format": {
                "image_classification": "image_folder",
                "text_classification": "labeled_text_jsonl",
                "retrieval": "pairs_jsonl",
                "vqa": "vqa_jsonl",
            }[options.task],
            "items": result.train_items + result.validation_items,
            "train": result.train_items,
            "validation": result.validation_items,
            "validation_split": options.validation_split,
            "seed": options.seed,
            "labels": len(result.labels),
        },
        metrics={
            "finetune": {
                "metric": result.metric,
                "validation_before": result.before,
                "validation_after": result.after,
                "before_method": result.before_method,
                "history": result.history[-50:],
            }
        },
    )

    def write(directory: Path, version: str) -> None:
        manifest.version = version
        save_artifact(directory, model, artifact.tokenizer, manifest)
        if export_onnx:
            try:
                from momo.export import export_artifact

                export_artifact(directory, onnx=True, torchscript=False, check_parity=False)
            except Exception as exc:  # the service can still export into its cache, or serve with torch
                from momo.artifact import update_manifest

                update_manifest(directory, notes={"export_error": f"{type(exc).__name__}: {exc}"})
                if emit is not None:
                    emit(f"ONNX export failed ({exc}); the version is registered without graphs", {})

    info = store.register(name, write)
    return str(info.reference)
