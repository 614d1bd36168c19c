"""The fine-tuning loop (`fit_task`): AdamW with warm-up + cosine, gradient clipping, validation with
early stopping, best weights kept. The one loop behind `run_finetune` and the evaluation's fine-tune
protocol (`training.evaluation`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from training.finetune.options import CancelFn, Cancelled, EventFn, FinetuneError, FinetuneOptions, ProgressFn
from training.finetune.tasks import ClassificationTask, RetrievalTask

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["FitOutcome", "fit_task"]


@dataclass
class FitOutcome:
    """What `fit_task` did: validation scores before/after, steps run, the validation history."""

    before: float | None
    before_method: str
    after: float | None
    steps: int
    steps_per_epoch: int
    stopped_early: bool
    history: list[dict[str, float]]


def fit_task(
    task: ClassificationTask | RetrievalTask,
    train: np.ndarray,
    val: np.ndarray,
    options: FinetuneOptions,
    *,
    progress: ProgressFn | None = None,
    cancel: CancelFn = lambda: False,
    emit: EventFn = lambda message, data: None,
) -> FitOutcome:
    """The fine-tuning loop: score the base on `val`, train on `train` (AdamW, warm-up + cosine,
    gradient clipping), validate every `eval_every` steps with early stopping, and leave the task's
    model holding the best validated weights. The one loop behind `run_finetune` and the evaluation's
    fine-tune protocol (`training.evaluation`)."""
    import torch

    from training.engine import warmup_cosine_factor

    model = task.model
    batch_size = min(options.batch_size, len(train))
    if options.task == "retrieval" and batch_size < 2:
        raise FinetuneError("retrieval needs at least 2 training pairs")

    # Score the base model before anything changes (its own head / zero-shot / chance).
    before: float | None = None
    before_method = "none"
    if len(val):
        before, before_method = task.base_score(val, cancel)
        emit(f"validation {task.metric} before: {before:.4f} ({before_method})", {"before": before})

    task.setup(train, val, cancel)
    groups = task.param_groups()
    optimizer = torch.optim.AdamW(
        [{k: v for k, v in g.items() if k != "names"} for g in groups], betas=(0.9, 0.98), eps=1e-6
    )
    steps_per_epoch = max(1, len(train) // batch_size)
    total = options.epochs * steps_per_epoch
    if options.max_steps is not None:
        total = min(total, options.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine_factor(total, int(options.warmup_ratio * total), 0.1)
    )
    eval_every = options.eval_every or steps_per_epoch
    patience = options.early_stopping_patience or 0
    params = [p for g in groups for p in g["params"]]

    history: list[dict[str, float]] = []
    best_score: tuple[float, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    bad_evals = 0
    stopped_early = False
    step = 0
    epoch = 0
    last_eval: dict[str, float] = {}

    def validate() -> bool:
        """Score on the validation split; remember the best weights; True when patience ran out."""
        nonlocal best_score, best_state, bad_evals, last_eval
        if not len(val):
            return False
        scores = task.evaluate(val)
        last_eval = scores
        row = {
            "step": float(step),
            "epoch": step / steps_per_epoch,
            **{f"val_{k}": v for k, v in scores.items()},
        }
        history.append(row)
        score = (scores["metric"], -scores["loss"])
        if best_score is None or score > best_score:
            best_score, best_state, bad_evals = score, task.trainable_state(), 0
        else:
            bad_evals += 1
        emit(
            f"step {step}/{total}: validation {task.metric} {scores['metric']:.4f}, "
            f"loss {scores['loss']:.4f}",
            row,
        )
        return bool(patience) and bad_evals >= patience

    if before_method in ("head", "projections"):
        validate()  # training starts from the base's own weights: they are the first candidate

    while step < total and not stopped_early:
        for indices in _epoch_batches(train, batch_size, options.seed, epoch):
            if step >= total:
                break
            if cancel():
                raise Cancelled(f"cancelled at step {step} of {total}")
            optimizer.zero_grad(set_to_none=True)
            loss, logs = task.loss(indices)
            if not torch.isfinite(loss):
                raise FinetuneError(
                    f"loss became {float(loss)} at step {step}; "
                    f"lower the learning rate ({options.learning_rate})"
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            metrics = {**logs, "lr": float(scheduler.get_last_lr()[0]), "epoch": step / steps_per_epoch}
            if step % eval_every == 0 or step == total:
                stopped_early = validate() and step < total
                metrics.update({f"val_{k}": v for k, v in last_eval.items()})
            if progress is not None:
                progress(step, total, metrics)
            if stopped_early:
                emit(f"early stopping at step {step}: no improvement in {patience} validations", {})
                break
        epoch += 1

    if best_state is not None:
        scale = best_state.pop("__logit_scale__", None)
        model.load_state_dict(best_state, strict=False)
        if scale is not None and isinstance(task, RetrievalTask):
            task.logit_scale.data.copy_(scale)
    task.finish()
    after = float(task.evaluate(val)["metric"]) if len(val) else None
    return FitOutcome(before, before_method, after, step, steps_per_epoch, stopped_early, history)


def _epoch_batches(n_train: np.ndarray, batch_size: int, seed: int, epoch: int) -> Iterator[np.ndarray]:
    import numpy as np

    order = np.random.default_rng([seed, epoch]).permutation(n_train)
    full = len(order) // batch_size
    for b in range(max(1, full)):
        chunk = order[b * batch_size : (b + 1) * batch_size]
        if len(chunk):
            yield chunk
