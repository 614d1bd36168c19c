"""The fine-tuning tasks: what is trained, its loss, its validation score and the base model's score.

`ClassificationTask` trains a head over the CLS of its input kind (image, text or fused pair: image
and text classification, VQA); `RetrievalTask` trains the encoder's two projections and the
temperature with symmetric InfoNCE. With `freeze_encoder`, CLS features are computed once and cached
(a linear probe). `build_task` picks one for `FinetuneOptions.task`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from training.finetune.options import (
    HEAD_INPUT,
    IMAGE_PROMPT,
    CancelFn,
    Cancelled,
    FinetuneOptions,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from momo.model import MoMoModel
    from training.streams import StreamData

__all__ = ["ClassificationTask", "RetrievalTask", "Task", "build_task", "cls_features"]


def cls_features(
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


class Task:
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


class ClassificationTask(Task):
    """A classifier head over the CLS of the task's input kind (image, text or fused pair; VQA is
    classification over answers). Reuses the base's head of that name when its labels match."""

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
            self.cached[everything] = cls_features(
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
            feats = cls_features(
                self.model, self.kind, self.data, val, max(64, self.options.batch_size), cancel
            )
            project = (
                self.model.encoder.project_image if self.kind == "image" else self.model.encoder.project_text
            )
            predicted = (project(feats.to(self.device)) @ classes.t()).argmax(-1).cpu().numpy()
        return float(np.mean(predicted == self.data.labels[val])), "zero-shot"

    _tokenizer: Any = None


class RetrievalTask(Task):
    """The encoder and its two projections (only the projections with `freeze_encoder`) and the
    temperature, trained with symmetric InfoNCE over in-batch negatives; scored by R@1."""

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
            self.image_cache = cls_features(self.model, "image", self.data, everything, batch, cancel).cpu()
            self.text_cache = cls_features(self.model, "text", self.data, everything, batch, cancel).cpu()

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
) -> ClassificationTask | RetrievalTask:
    """The task object that trains `model` on `data` (a new or reused head, or the projections)."""
    if options.task == "retrieval":
        return RetrievalTask(model, data, options, device)
    task = ClassificationTask(model, data, options, device)
    task._tokenizer = tokenizer
    return task
