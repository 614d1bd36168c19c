"""Fine-tuning: a named model version + a dataset in one of the DESIGN §4 formats -> a new version.

Tasks (dataset format -> what is trained):

- ``image_classification`` — an image folder (``root/<class>/<image>``) -> a classifier head over the
  image CLS;
- ``text_classification`` — a labelled-text JSONL (``{"text", "label"}``) -> a head over the text CLS;
- ``retrieval`` — an image–text pair JSONL (``{"image", "text"}``) -> the encoder and its two
  projections, trained with symmetric InfoNCE (ITC) and the learnable temperature;
- ``vqa`` — a VQA JSONL (``{"image", "question", "answer"}``) -> an answer head over the fused CLS.

A seeded fraction of the data (grouped by image, so no image is in both parts) is held out for
validation: it is scored before training (the *base* model: an existing compatible head, else
zero-shot with the prompt "a photo of a {label}" for images / the bare label for texts, else
chance; R@1 for retrieval), after every epoch (early stopping keeps the best weights) and at the
end. ``freeze_encoder`` trains only the head (retrieval: only the projections and temperature); the
encoder's CLS features are then computed once and cached, so a frozen run is a linear probe.

The result is registered through `ModelStore.register` (written into a hidden temp directory,
verified, then renamed: never a half-written version) with a manifest naming the parent version,
the task, the data, the hyper-parameters and the validation metrics; the new head (with its labels
and validation accuracy) goes into ``heads.json``. ONNX graphs are exported into the new version
(``momo.export.export_artifact``) so the service's ONNX runtime loads it without a cache export.

Callbacks: ``progress(step, total, metrics)`` after every optimizer step, ``should_cancel()`` before
every step (and while features are cached; `Cancelled` is raised, nothing is registered), and
``on_event(message, data)`` for milestones (data loaded, validation scores, early stop, registered).
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import numpy as np
    import torch

    from momo.model import MoMoModel
    from training.streams import StreamData

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


# --- data -----------------------------------------------------------------------------------------
def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):
        return False


def check_dataset(task: str, path: Path, allowed_root: Path | None = None) -> int:
    """Read the dataset's records strictly (every problem raises `DataFormatError` naming the file and
    line) and check every file it names lies under `allowed_root` (symlinks resolved). Returns the
    record count."""
    from training.data.formats import (
        DataFormatError,
        iter_jsonl,
        read_image_folder,
        read_labeled_text,
        read_pairs,
        read_vqa,
    )

    if allowed_root is not None and not _inside(path, allowed_root):
        raise FinetuneError(f"dataset {path} is outside the allowed data root")
    if task == "image_classification":
        if not path.is_dir():
            raise FinetuneError(f"{path}: image classification needs an image folder (root/<class>/<image>)")
        records = read_image_folder(path)
        if allowed_root is not None:
            for record in records:
                if not _inside(record.path, allowed_root):
                    raise DataFormatError(f"{record.path}: image resolves outside the allowed data root")
        if len({r.label for r in records}) < 2:
            raise DataFormatError(f"{path}: needs at least 2 class sub-folders with images")
        return len(records)
    if not path.is_file():
        raise FinetuneError(f"{path}: {task} needs a JSONL file")
    if path.suffix.lower() != ".jsonl":
        raise FinetuneError(f"{path}: {task} needs a .jsonl file")
    if task == "text_classification":
        texts = read_labeled_text(path)
        if len({r.label for r in texts}) < 2:
            raise DataFormatError(f"{path}: needs at least 2 distinct labels")
        return len(texts)
    images = [r.image for r in (read_pairs(path) if task == "retrieval" else read_vqa(path))]
    if allowed_root is not None:
        lines = [n for n, _ in iter_jsonl(path)]
        for lineno, image in zip(lines, images, strict=True):
            if not _inside(image, allowed_root):
                raise DataFormatError(
                    f"{path}:{lineno}: image {image} resolves outside the allowed data root"
                )
    return len(images)


def _locate_bad_image(task: str, path: Path, exc: Exception) -> str:
    """The file (and JSONL line) of the first image that does not decode (only on the failure path)."""
    from momo.preprocess import load_image_file
    from training.data.formats import iter_jsonl, read_image_folder

    candidates: list[tuple[str, Path]] = []
    if task == "image_classification":
        candidates = [(str(r.path), r.path) for r in read_image_folder(path)]
    else:
        for lineno, obj in iter_jsonl(path):
            image = Path(str(obj.get("image", "")))
            candidates.append((f"{path}:{lineno}", image if image.is_absolute() else path.parent / image))
    for where, image in candidates:
        try:
            load_image_file(image)
        except (OSError, ValueError) as err:
            return f"{where}: image {image.name} cannot be read ({err})"
    return f"{path}: an image cannot be read ({exc})"


def load_dataset(
    task: str,
    path: Path,
    config: Any,
    tokenizer: Any,
    *,
    limit: int | None = None,
    allowed_root: Path | None = None,
) -> StreamData:
    """Validate, then decode / tokenise the dataset into arrays (`training.streams.StreamData`)."""
    from training.data.formats import DataFormatError
    from training.streams import build_stream_data

    path = Path(path)
    if not path.exists():
        raise FinetuneError(f"dataset {path} does not exist")
    check_dataset(task, path, allowed_root)
    try:
        data = build_stream_data(STREAM_KIND[task], [path], config, tokenizer, limit=limit)
    except DataFormatError:
        raise
    except (OSError, ValueError) as exc:
        if task == "text_classification":
            raise DataFormatError(f"{path}: {exc}") from exc
        raise DataFormatError(_locate_bad_image(task, path, exc)) from exc
    if len(data) < 2:
        raise DataFormatError(f"{path}: {len(data)} usable record(s); a fine-tune needs at least 2")
    return data


def split_indices(data: StreamData, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices; items sharing an image stay on the same side."""
    import numpy as np

    n = len(data)
    groups = data.image_index if data.image_index is not None else np.arange(n)
    unique = np.unique(groups)
    if fraction <= 0 or len(unique) < 2:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    held = rng.permutation(unique)[: max(1, min(len(unique) - 1, round(len(unique) * fraction)))]
    is_val = np.isin(groups, held)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


# --- tasks ----------------------------------------------------------------------------------------
def _features(
    model: MoMoModel, kind: str, data: StreamData, indices: np.ndarray, batch: int, cancel: CancelFn
) -> torch.Tensor:
    """CLS features (len(indices), D) in eval mode, no gradients."""
    import torch

    from training.streams import make_batch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(indices), batch):
            if cancel():
                raise Cancelled("cancelled while computing features")
            b = make_batch(data, indices[start : start + batch], model.config).to(device)
            out.append(model.head_features(kind, b.pixels, b.input_ids, b.attention_mask))
    return torch.cat(out) if out else torch.zeros(0, model.config.width)


class _Task:
    """One task's trainable parameters, loss and validation score."""

    metric = "accuracy"

    def __init__(self, model: MoMoModel, data: StreamData, options: FinetuneOptions, device: torch.device):
        self.model, self.data, self.options, self.device = model, data, options, device

    def setup(self, train: np.ndarray, val: np.ndarray, cancel: CancelFn) -> None: ...

    def param_groups(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def loss(self, indices: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def evaluate(self, indices: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    def trainable_state(self) -> dict[str, torch.Tensor]:
        names = {n for g in self.param_groups() for n in g["names"]}
        return {k: v.detach().clone() for k, v in self.model.state_dict().items() if k in names}

    def finish(self) -> None: ...


def _decay_groups(
    named: list[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms, embeddings, positions, tokens, temperatures."""
    from training.engine import exempt_from_decay

    decay = [(n, p) for n, p in named if not exempt_from_decay(n, p)]
    no_decay = [(n, p) for n, p in named if (n, p) not in decay]
    groups = []
    for items, wd in ((decay, weight_decay), (no_decay, 0.0)):
        if items:
            groups.append(
                {
                    "params": [p for _, p in items],
                    "names": [n for n, _ in items],
                    "lr": lr,
                    "weight_decay": wd,
                }
            )
    return groups


class _ClassificationTask(_Task):
    def __init__(self, model: MoMoModel, data: StreamData, options: FinetuneOptions, device: torch.device):
        from momo.heads import HeadSpec

        super().__init__(model, data, options, device)
        name = options.head_name
        assert name is not None
        self.head = name
        self.kind = HEAD_INPUT[options.task]
        labels = list(data.label_names)
        existing = model.head_specs.get(name)
        self.reused = (
            existing is not None
            and existing.input == self.kind
            and list(existing.labels) == labels
            and (options.head_hidden is None or existing.hidden == options.head_hidden)
        )
        if not self.reused:
            hidden = options.head_hidden
            if hidden is None and options.task == "vqa":
                hidden = 2 * model.config.width
            spec = HeadSpec(
                input=self.kind,  # type: ignore[arg-type]
                labels=labels,
                task="vqa" if options.task == "vqa" else "classification",
                hidden=hidden,
            )
            model.add_head(name, spec)
            model.to(device)
        self.cached: torch.Tensor | None = None  # (N, D) features when the encoder is frozen

    def setup(self, train: np.ndarray, val: np.ndarray, cancel: CancelFn) -> None:
        import numpy as np
        import torch

        if self.options.freeze_encoder:
            self.model.encoder.requires_grad_(False)
            self.model.encoder.eval()
            everything = np.arange(len(self.data))
            self.cached = torch.zeros(len(self.data), self.model.config.width)
            self.cached[everything] = _features(
                self.model, self.kind, self.data, everything, max(64, self.options.batch_size), cancel
            ).cpu()

    def param_groups(self) -> list[dict[str, Any]]:
        lr_head = self.options.learning_rate * self.options.head_lr_multiplier
        head_params = [
            (f"heads.{self.head}.{n}", p) for n, p in self.model.heads[self.head].named_parameters()
        ]
        groups = _decay_groups(head_params, lr_head, self.options.weight_decay)
        if not self.options.freeze_encoder:
            enc = [(f"encoder.{n}", p) for n, p in self.model.encoder.named_parameters() if p.requires_grad]
            groups += _decay_groups(enc, self.options.learning_rate, self.options.weight_decay)
        return groups

    def logits(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        from training.streams import make_batch

        assert self.data.labels is not None
        if self.cached is not None:
            features = self.cached[torch.from_numpy(indices)].to(self.device)
            labels = torch.from_numpy(self.data.labels[indices]).to(self.device)
            return self.model.heads[self.head](features), labels
        batch = make_batch(self.data, indices, self.model.config).to(self.device)
        assert batch.labels is not None
        features = self.model.head_features(self.kind, batch.pixels, batch.input_ids, batch.attention_mask)
        return self.model.heads[self.head](features), batch.labels

    def loss(self, indices: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        import torch.nn.functional as F

        self.model.heads[self.head].train()
        if not self.options.freeze_encoder:
            self.model.encoder.train()
        logits, labels = self.logits(indices)
        loss = F.cross_entropy(logits.float(), labels)
        accuracy = float((logits.argmax(-1) == labels).float().mean())
        return loss, {"loss": float(loss.detach()), "train_accuracy": accuracy}

    def evaluate(self, indices: np.ndarray) -> dict[str, float]:
        import torch
        import torch.nn.functional as F

        self.model.eval()
        correct, total, loss_sum = 0, 0, 0.0
        with torch.no_grad():
            for start in range(0, len(indices), max(64, self.options.batch_size)):
                chunk = indices[start : start + max(64, self.options.batch_size)]
                logits, labels = self.logits(chunk)
                loss_sum += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
                correct += int((logits.argmax(-1) == labels).sum())
                total += len(chunk)
        return {"metric": correct / max(1, total), "loss": loss_sum / max(1, total)}

    def base_score(self, val: np.ndarray, cancel: CancelFn) -> tuple[float, str]:
        """The base model's validation accuracy: its own head, zero-shot, or chance."""
        import numpy as np
        import torch

        if self.reused:
            return self.evaluate(val)["metric"], "head"
        assert self.data.labels is not None
        if self.options.task == "vqa" or len(val) == 0:
            return 1.0 / max(1, len(self.data.label_names)), "chance"
        tokenizer = self._tokenizer
        labels = [label.replace("_", " ") for label in self.data.label_names]
        prompts = [IMAGE_PROMPT.format(label=label) if self.kind == "image" else label for label in labels]
        config = self.model.config
        self.model.eval()
        with torch.no_grad():
            text = tokenizer.encode_batch(prompts, config.max_text_len)
            ids = torch.from_numpy(text.input_ids).to(self.device)
            mask = torch.from_numpy(text.attention_mask).to(self.device)
            classes = self.model.encoder.embed_text(ids, mask)  # (C, E)
            feats = _features(self.model, self.kind, self.data, val, max(64, self.options.batch_size), cancel)
            project = (
                self.model.encoder.project_image if self.kind == "image" else self.model.encoder.project_text
            )
            predicted = (project(feats.to(self.device)) @ classes.t()).argmax(-1).cpu().numpy()
        return float(np.mean(predicted == self.data.labels[val])), "zero-shot"

    _tokenizer: Any = None


class _RetrievalTask(_Task):
    metric = "r@1"

    def __init__(self, model: MoMoModel, data: StreamData, options: FinetuneOptions, device: torch.device):
        import torch

        super().__init__(model, data, options, device)
        init = math.log(1.0 / max(float(model.temperature), 1e-4))
        self.logit_scale = torch.nn.Parameter(torch.tensor(init, device=device))
        self.max_log = math.log(100.0)
        self.image_cache: torch.Tensor | None = None
        self.text_cache: torch.Tensor | None = None

    def setup(self, train: np.ndarray, val: np.ndarray, cancel: CancelFn) -> None:
        import numpy as np

        if self.options.freeze_encoder:
            enc = self.model.encoder
            for name, param in enc.named_parameters():
                param.requires_grad_(name.startswith(("image_projection", "text_projection")))
            enc.eval()
            everything = np.arange(len(self.data))
            batch = max(64, self.options.batch_size)
            self.image_cache = _features(self.model, "image", self.data, everything, batch, cancel).cpu()
            self.text_cache = _features(self.model, "text", self.data, everything, batch, cancel).cpu()

    def param_groups(self) -> list[dict[str, Any]]:
        lr_head = self.options.learning_rate * self.options.head_lr_multiplier
        enc = self.model.encoder
        projections = [
            (f"encoder.{n}", p)
            for n, p in enc.named_parameters()
            if n.startswith(("image_projection", "text_projection"))
        ]
        groups = _decay_groups(projections, lr_head, self.options.weight_decay)
        groups.append({"params": [self.logit_scale], "names": [], "lr": lr_head, "weight_decay": 0.0})
        if not self.options.freeze_encoder:
            rest = [
                (f"encoder.{n}", p)
                for n, p in enc.named_parameters()
                if not n.startswith(("image_projection", "text_projection"))
            ]
            groups += _decay_groups(rest, self.options.learning_rate, self.options.weight_decay)
        return groups

    def embed(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        from training.streams import make_batch

        enc = self.model.encoder
        if self.image_cache is not None and self.text_cache is not None:
            rows = torch.from_numpy(indices)
            return (
                enc.project_image(self.image_cache[rows].to(self.device)),
                enc.project_text(self.text_cache[rows].to(self.device)),
            )
        batch = make_batch(self.data, indices, self.model.config).to(self.device)
        assert batch.pixels is not None and batch.input_ids is not None and batch.attention_mask is not None
        return enc.embed_image(batch.pixels), enc.embed_text(batch.input_ids, batch.attention_mask)

    def loss(self, indices: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        from training.losses.contrastive import info_nce

        if not self.options.freeze_encoder:
            self.model.encoder.train()
        image, text = self.embed(indices)
        loss = info_nce(image, text, self.logit_scale.clamp(0.0, self.max_log).exp())
        return loss, {"loss": float(loss.detach()), "temperature": self.temperature}

    @property
    def temperature(self) -> float:
        return float(1.0 / self.logit_scale.detach().clamp(0.0, self.max_log).exp())

    def evaluate(self, indices: np.ndarray) -> dict[str, float]:
        import numpy as np
        import torch

        from training.evaluation.metrics import recall_at_k
        from training.losses.contrastive import info_nce

        self.model.eval()
        assert self.data.image_index is not None
        with torch.no_grad():
            images, texts = [], []
            for start in range(0, len(indices), 128):
                i, t = self.embed(indices[start : start + 128])
                images.append(i)
                texts.append(t)
            image, text = torch.cat(images), torch.cat(texts)
            loss = float(info_nce(image, text, self.logit_scale.clamp(0.0, self.max_log).exp()))
        assert self.data.tokens is not None
        groups = self.data.image_index[indices]
        # One row per distinct image. A text is relevant to an image when it is one of that image's
        # captions, or the very same text as one of them (templated captions repeat).
        _, first = np.unique(groups, return_index=True)
        image_np, text_np = image[first].cpu().numpy(), text.cpu().numpy()
        _, text_key = np.unique(self.data.tokens[indices], axis=0, return_inverse=True)
        text_key = text_key.reshape(-1)
        owns = groups[first][:, None] == groups[None, :]  # (images, texts): caption of that image
        same_text = text_key[:, None] == text_key[None, :]  # (texts, texts)
        relevance = (owns.astype(np.int64) @ same_text.astype(np.int64)) > 0
        sim = image_np @ text_np.T
        i2t = recall_at_k(sim, relevance, (1,))[1]
        t2i = recall_at_k(sim.T, relevance.T, (1,))[1]
        return {"metric": (i2t + t2i) / 2, "i2t_r@1": i2t, "t2i_r@1": t2i, "loss": loss}

    def base_score(self, val: np.ndarray, cancel: CancelFn) -> tuple[float, str]:
        return self.evaluate(val)["metric"], "projections"

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = super().trainable_state()
        state["__logit_scale__"] = self.logit_scale.detach().clone()
        return state

    def finish(self) -> None:
        self.model.temperature = self.temperature


def build_task(
    model: MoMoModel, data: StreamData, options: FinetuneOptions, device: torch.device, tokenizer: Any
) -> _ClassificationTask | _RetrievalTask:
    """The task object that trains `model` on `data` (a new or reused head, or the projections)."""
    if options.task == "retrieval":
        return _RetrievalTask(model, data, options, device)
    task = _ClassificationTask(model, data, options, device)
    task._tokenizer = tokenizer
    return task


# --- the loop ---------------------------------------------------------------------------------------
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
    task: _ClassificationTask | _RetrievalTask,
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
        if scale is not None and isinstance(task, _RetrievalTask):
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


def _never() -> bool:
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
    cancel = should_cancel or _never
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

    head = task.head if isinstance(task, _ClassificationTask) else None
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


# --- CLI --------------------------------------------------------------------------------------------
def register(app: typer.Typer) -> None:
    @app.command("finetune")
    def finetune(
        task: Annotated[str, typer.Option("--task", help=" | ".join(TASKS))],
        model: Annotated[str, typer.Option("--model", help="Base version: NAME, NAME:VERSION or 'active'.")],
        data: Annotated[
            Path,
            typer.Option(
                "--data",
                help="Image folder (image_classification) or JSONL (text_classification: {text,label}; "
                "retrieval: {image,text}; vqa: {image,question,answer}).",
            ),
        ],
        epochs: Annotated[int, typer.Option("--epochs", min=1)] = 3,
        max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Cap on steps.")] = None,
        lr: Annotated[float, typer.Option("--lr", help="Encoder learning rate.")] = 3e-4,
        head_lr_multiplier: Annotated[float, typer.Option("--head-lr-multiplier")] = 10.0,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
        freeze_encoder: Annotated[
            bool, typer.Option("--freeze-encoder/--full", help="Train only the head (or projections).")
        ] = False,
        val_split: Annotated[float, typer.Option("--val-split", help="Held-out fraction (seeded).")] = 0.2,
        patience: Annotated[
            int, typer.Option("--patience", help="Early stopping: validations without improvement (0: off).")
        ] = 3,
        eval_every: Annotated[
            int | None, typer.Option("--eval-every", help="Steps (default: per epoch).")
        ] = None,
        head: Annotated[str | None, typer.Option("--head", help="Head name (default per task).")] = None,
        name: Annotated[str | None, typer.Option("--name", help="Register under this model name.")] = None,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        limit: Annotated[int | None, typer.Option("--limit", help="Use at most this many records.")] = None,
        export_onnx: Annotated[bool, typer.Option("--export/--no-export", help="Export ONNX graphs.")] = True,
        device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
        store: Annotated[Path, typer.Option("--store", envvar="MOMO_MODEL_STORE")] = Path("model_store"),
        activate: Annotated[bool, typer.Option("--activate/--no-activate")] = False,
    ) -> None:
        """Fine-tune a model version on a dataset and register the result as a new version."""
        from tqdm import tqdm

        from momo.artifact import ArtifactError
        from momo.store import ModelStore, StoreError

        options = FinetuneOptions(
            task=task,
            epochs=epochs,
            max_steps=max_steps,
            learning_rate=lr,
            head_lr_multiplier=head_lr_multiplier,
            batch_size=batch_size,
            freeze_encoder=freeze_encoder,
            validation_split=val_split,
            early_stopping_patience=patience,
            eval_every=eval_every,
            head=head,
            seed=seed,
            limit=limit,
            output_name=name,
            export_onnx=export_onnx,
            device=device,
        )
        bar: Any = None

        def on_progress(step: int, total: int, metrics: dict[str, float]) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, desc=f"finetune {task}", dynamic_ncols=True)
            bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items() if k in ("loss", "val_metric")})
            bar.update(1)

        def on_event(message: str, _data: dict[str, Any]) -> None:
            (tqdm.write if bar is not None else typer.echo)(message)

        try:
            result = run_finetune(
                model, data, options, store_root=store, progress=on_progress, on_event=on_event
            )
        except (FinetuneError, StoreError, ArtifactError, ValueError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        finally:
            if bar is not None:
                bar.close()

        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        typer.echo(
            f"{result.task}: validation {result.metric} {fmt(result.before)} ({result.before_method}) -> "
            f"{fmt(result.after)} in {result.steps} steps ({result.wall_seconds:.1f}s)"
        )
        if result.reference:
            typer.echo(f"registered {result.reference} (parent {result.base})")
            if activate:
                with contextlib.suppress(StoreError):
                    ModelStore(store).activate(result.reference)
                    typer.echo(f"active: {result.reference}")


__all__ = [
    "TASKS",
    "Cancelled",
    "FinetuneError",
    "FinetuneOptions",
    "FinetuneResult",
    "check_dataset",
    "load_dataset",
    "register",
    "run_finetune",
    "split_indices",
]
