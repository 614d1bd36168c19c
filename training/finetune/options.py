"""What a fine-tune is asked to do and what it reports: tasks, options, results, errors, callbacks."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_HEAD",
    "HEAD_INPUT",
    "IMAGE_PROMPT",
    "STREAM_KIND",
    "TASKS",
    "CancelFn",
    "Cancelled",
    "EventFn",
    "FinetuneError",
    "FinetuneOptions",
    "FinetuneResult",
    "ProgressFn",
]

TASKS = ("image_classification", "text_classification", "retrieval", "vqa")
STREAM_KIND = {
    "image_classification": "image_class",
    "text_classification": "text_class",
    "retrieval": "pair",
    "vqa": "vqa",
}
HEAD_INPUT = {"image_classification": "image", "text_classification": "text", "vqa": "pair"}
DEFAULT_HEAD = {
    "image_classification": "image_classifier",
    "text_classification": "text_classifier",
    "vqa": "vqa",
}
RESERVED_HEADS = frozenset({"itm"})
HEAD_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
IMAGE_PROMPT = "a photo of a {label}"

ProgressFn = Callable[[int, int, dict[str, float]], None]
CancelFn = Callable[[], bool]
EventFn = Callable[[str, dict[str, Any]], None]


class Cancelled(Exception):
    """The cancellation check returned True; training stopped and nothing was registered."""


class FinetuneError(ValueError):
    """A fine-tune cannot run as asked (bad dataset, bad options, incompatible base model)."""


@dataclass
class FinetuneOptions:
    """Everything that shapes a fine-tune (recorded in the new version's manifest)."""

    task: str
    epochs: int = 3
    max_steps: int | None = None  # a cap on optimizer steps (None: epochs decide)
    learning_rate: float = 3e-4  # encoder learning rate (full fine-tune)
    head_lr_multiplier: float = 10.0  # new heads / projections / temperature learn this much faster
    batch_size: int = 32
    freeze_encoder: bool = False
    validation_split: float = 0.2
    early_stopping_patience: int | None = 3  # evaluations without improvement; None/0: off
    eval_every: int | None = None  # steps between validations (None: once per epoch)
    head: str | None = None  # head name (default per task); ignored for retrieval
    head_hidden: int | None = None  # an MLP head with this hidden width (default: linear; VQA: 2*width)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    limit: int | None = None  # use at most this many records (before the split)
    output_name: str | None = None  # register under this model name (default: the base's name)
    export_onnx: bool = True
    device: str = "auto"

    def validate(self) -> None:
        if self.task not in TASKS:
            raise FinetuneError(f"unknown task {self.task!r}; choose from {', '.join(TASKS)}")
        if self.epochs < 1:
            raise FinetuneError("epochs must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise FinetuneError("max_steps must be at least 1")
        if not 0 < self.learning_rate < 1:
            raise FinetuneError("learning_rate must be in (0, 1)")
        if self.batch_size < 2 and self.task == "retrieval":
            raise FinetuneError("retrieval needs a batch size of at least 2 (in-batch negatives)")
        if self.batch_size < 1:
            raise FinetuneError("batch_size must be at least 1")
        if not 0 <= self.validation_split < 1:
            raise FinetuneError("validation_split must be in [0, 1)")
        head = self.head_name
        if head is not None and (not HEAD_NAME_RE.match(head) or head in RESERVED_HEADS):
            raise FinetuneError(
                f"invalid head name {head!r}: letters, digits and '_', starting with a letter "
                f"(not {', '.join(sorted(RESERVED_HEADS))})"
            )

    @property
    def head_name(self) -> str | None:
        if self.task == "retrieval":
            return None
        return self.head or DEFAULT_HEAD[self.task]


@dataclass
class FinetuneResult:
    """What a fine-tune produced: scores before/after, steps, the history, the trained model."""

    task: str
    base: str
    reference: str | None  # name:version registered (None when not registered)
    head: str | None
    metric: str  # "accuracy" | "r@1"
    before: float | None  # None without a validation split
    after: float | None
    before_method: str  # "head" | "zero-shot" | "chance" | "projections"
    steps: int
    epochs_run: float
    stopped_early: bool
    train_items: int
    validation_items: int
    labels: list[str] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    wall_seconds: float = 0.0
    model: Any = None  # MoMoModel

    def metrics(self) -> dict[str, Any]:
        """What goes into the manifest and the job record."""
        out = {k: v for k, v in asdict(self).items() if k not in ("model", "labels", "history", "reference")}
        out["history"] = self.history[-50:]
        return out
