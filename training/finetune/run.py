"""`run_finetune`: a store reference and a dataset in, a fine-tuned model (registered as a new
version unless asked not to) out. It wires the parts: data (`.data`), task (`.tasks`), loop
(`.loop`) and registration (`.registration`)."""

from __future__ import annotations

import time
from pathlib import Path

from training.finetune.data import load_dataset, split_indices
from training.finetune.loop import fit_task
from training.finetune.options import (
    CancelFn,
    Cancelled,
    EventFn,
    FinetuneOptions,
    FinetuneResult,
    ProgressFn,
)
from training.finetune.registration import register_result
from training.finetune.tasks import ClassificationTask, build_task

__all__ = ["never_cancel", "run_finetune"]


def never_cancel() -> bool:
    """The cancellation check when the caller gives none: never cancel."""
    return False


def run_finetune(
    base: str,
    dataset: str | Path,
    options: FinetuneOptions,
    *,
    store_root: str | Path | None = None,
    allowed_root: str | Path | None = None,
    register: bool = True,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    on_event: EventFn | None = None,
) -> FinetuneResult:
    """Fine-tune version `base` (a store reference) on `dataset`; register the result as a new
    version (unless `register` is False). `allowed_root`: every file the dataset names must lie
    under it (the service passes its data root). Raises `Cancelled`, `FinetuneError`,
    `DataFormatError` (a `ValueError` naming file and line), `StoreError`/`ArtifactError`."""
    import torch

    from momo.store import ModelStore
    from training.engine import resolve_device

    options.validate()
    cancel = should_cancel or never_cancel
    emit = on_event or (lambda message, data: None)
    started = time.perf_counter()
    store = ModelStore(store_root) if store_root is not None else ModelStore()
    artifact = store.load(base)
    base_ref = artifact.reference
    device = resolve_device(options.device)
    dataset = Path(dataset)
    root = Path(allowed_root) if allowed_root is not None else None

    data = load_dataset(
        options.task, dataset, artifact.config, artifact.tokenizer, limit=options.limit, allowed_root=root
    )
    train, val = split_indices(data, options.validation_split, options.seed)
    emit(
        f"loaded {len(data)} records ({len(train)} train, {len(val)} validation"
        + (f", {len(data.label_names)} labels)" if data.label_names else ")"),
        {"items": len(data), "train": len(train), "validation": len(val), "labels": len(data.label_names)},
    )
    if cancel():
        raise Cancelled("cancelled before training")

    torch.manual_seed(options.seed)
    model = artifact.load_model("cpu").to(device)
    frozen_copy = (
        {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}
        if options.freeze_encoder
        else {}
    )
    task = build_task(model, data, options, device, artifact.tokenizer)
    fit = fit_task(task, train, val, options, progress=progress, cancel=cancel, emit=emit)
    before, before_method, after = fit.before, fit.before_method, fit.after
    step, steps_per_epoch, stopped_early = fit.steps, fit.steps_per_epoch, fit.stopped_early
    history = fit.history
    model.requires_grad_(True)
    model = model.cpu().eval()
    for key, value in frozen_copy.items():
        if not key.startswith(("image_projection", "text_projection")) and not torch.equal(
            value, model.encoder.state_dict()[key]
        ):
            raise RuntimeError(f"frozen encoder weight {key} changed")  # a bug, never expected

    head = task.head if isinstance(task, ClassificationTask) else None
    if head is not None and after is not None:
        model.head_specs[head].metrics = {"val_accuracy": round(after, 6)}
    result = FinetuneResult(
        task=options.task,
        base=base_ref,
        reference=None,
        head=head,
        metric=task.metric,
        before=before,
        after=after,
        before_method=before_method,
        steps=step,
        epochs_run=step / steps_per_epoch,
        stopped_early=stopped_early,
        train_items=len(train),
        validation_items=len(val),
        labels=list(data.label_names),
        history=history,
        wall_seconds=time.perf_counter() - started,
        model=model,
    )
    if after is not None:
        emit(
            f"validation {task.metric} after: {after:.4f} (before {before:.4f})",
            {"after": after, "before": before},
        )
    if cancel():
        raise Cancelled("cancelled before registration")
    if register:
        result.reference = register_result(
            store, artifact, model, dataset, options, result, export_onnx=options.export_onnx, emit=emit
        )
        emit(f"registered {result.reference}", {"reference": result.reference})
    return result
