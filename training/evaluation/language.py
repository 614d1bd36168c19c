"""Language tasks: WordNet noun category from the gloss (26 classes), fortune file from the fortune
text, and the held-out MLM loss.

Classification is measured three ways, each with its baselines in the same run:

- the paper's protocol (like FLAVA): **fine-tune** the whole encoder plus a linear head on the train
  split, with one fixed budget for every model (`EvalSettings.finetune_*`), select the best of the
  validation checkpoints on the val split, score that one on test. The random-weights twin is
  fine-tuned the same way: it is the fair baseline of a fine-tuned model. TF-IDF + logistic
  regression is the feature baseline;
- frozen features: a linear probe on the text CLS, and on the served joint text embedding (what
  ``/v1/embeddings`` returns for a text, what a user of text search gets).

The MLM loss is the mean cross-entropy of the artifact's token head over 15 % of the tokens of
held-out corpus lines (BERT masking, fixed seed), beside the random twin and a unigram model fit on
the train corpus (the best loss without context).
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from momo.artifact import Artifact
from training.evaluation import metrics as M
from training.evaluation.common import (
    FROZEN,
    EvalSettings,
    Row,
    TaskSkipped,
    read_jsonl,
    require,
    source_files,
    subsample,
)
from training.evaluation.extractor import Extractor

if TYPE_CHECKING:
    import torch

    from momo.model import MoMoModel

MLM_EVAL_PROBABILITY = 0.15


def _labeled(s: EvalSettings, source: str, split: str, limit: int) -> tuple[list[str], list[str]]:
    rows = read_jsonl(source_files(s.data_dir)[source][split]["labeled_text"])
    chosen = subsample(len(rows), limit, s.seed)
    return [str(rows[i]["text"]) for i in chosen], [str(rows[i]["label"]) for i in chosen]


def finetune_scores(
    artifacts: dict[str, Artifact],
    s: EvalSettings,
    train: tuple[list[str], list[str]],
    val: tuple[list[str], list[str]],
    test: tuple[list[str], list[str]],
) -> dict[str, tuple[float, float]]:
    """The fine-tune protocol for each artifact (the model and its random twin): a fresh linear head
    and the whole encoder trained on `train` for the fixed budget of `s`, the best validation
    checkpoint kept. {name: (its val accuracy, its test accuracy)}."""
    import torch

    from training.data.formats import write_jsonl
    from training.finetune import FinetuneOptions, build_task, fit_task
    from training.streams import build_stream_data

    labels = sorted(set(train[1]))
    options = FinetuneOptions(
        task="text_classification",
        epochs=10_000,  # the step budget decides
        max_steps=s.finetune_steps,
        learning_rate=s.finetune_lr,
        batch_size=s.finetune_batch,
        validation_split=0.0,
        early_stopping_patience=None,
        eval_every=s.finetune_eval_every,
        seed=s.seed,
        export_onnx=False,
        device="cpu",
        head="finetune_protocol",  # always a fresh head, never one the artifact already has
    )
    parts = [train, val, (list(test[0]), list(test[1]))]
    keep = [[i for i, y in enumerate(part[1]) if y in labels] for part in parts]  # labels seen in train
    with tempfile.TemporaryDirectory(prefix="momo-finetune-eval-") as tmp:
        path = Path(tmp) / "all.jsonl"
        write_jsonl(
            path,
            (
                {"text": part[0][i], "label": part[1][i]}
                for part, idx in zip(parts, keep, strict=True)
                for i in idx
            ),
        )
        first = next(iter(artifacts.values()))
        data = build_stream_data("text_class", [path], first.config, first.tokenizer, label_names=labels)
    bounds = np.cumsum([0, *(len(idx) for idx in keep)])
    train_idx, val_idx, test_idx = (np.arange(bounds[k], bounds[k + 1]) for k in range(3))
    scores: dict[str, tuple[float, float]] = {}
    for name, artifact in artifacts.items():
        torch.manual_seed(s.seed)
        model = artifact.load_model("cpu")
        task = build_task(model, data, options, torch.device("cpu"), artifact.tokenizer)
        fit = fit_task(task, train_idx, val_idx, options)
        assert fit.after is not None
        scores[name] = (fit.after, float(task.evaluate(test_idx)["metric"]))
    return scores


def _text_classification_rows(ex: Extractor, s: EvalSettings, source: str, title: str) -> list[Row]:
    train_x, train_y = _labeled(s, source, "train", s.max_train)
    val_x, val_y = _labeled(s, source, "val", s.max_val)
    test_x, test_y = _labeled(s, source, s.split, s.max_test)
    majority = M.majority_accuracy(train_y, test_y)
    tfidf = M.tfidf_probe(train_x, train_y, test_x, test_y, seed=s.seed)
    ft_train = _labeled(s, source, "train", s.max_finetune_train)
    artifacts = {name: runtime.artifact for name, runtime in ex.runtimes.items()}
    finetuned = finetune_scores(artifacts, s, ft_train, (val_x, val_y), (test_x, test_y))
    train = ex.texts(train_x, f"{source} train")
    test = ex.texts(test_x, f"{source} test")

    def probe(feature: str) -> dict[str, float]:
        return {
            n: M.linear_probe(train[n][feature], train_y, test[n][feature], test_y, seed=s.seed)
            for n in ex.runtimes
        }

    baselines = {
        "trivial": majority,
        "trivial_name": "majority class",
        "feature": tfidf,
        "feature_name": "TF-IDF + logistic regression",
        "n_test": len(test_y),
    }
    cls_probe, embedding_probe = probe("cls"), probe("embedding")
    budget = (
        f"{s.finetune_steps} steps of {s.finetune_batch}, lr {s.finetune_lr:g} (head x10), "
        f"best of every {s.finetune_eval_every} steps on val"
    )
    return [
        Row(
            group="language",
            task=f"{title}_finetune",
            metric="accuracy",
            model=finetuned["model"][1],
            random_init=finetuned["random_init"][1] if "random_init" in finetuned else None,
            n_train=len(ft_train[1]),
            primary=True,
            protocol="fine-tune",
            note=f"encoder + linear head fine-tuned: {budget}; selected checkpoint's val accuracy "
            f"{finetuned['model'][0]:.3f}",
            **baselines,  # type: ignore[arg-type]
        ),
        Row(
            group="language",
            task=f"{title}_linear_probe",
            metric="accuracy",
            model=cls_probe["model"],
            random_init=cls_probe.get("random_init"),
            n_train=len(train_y),
            protocol=FROZEN,
            note="logistic regression on the frozen text CLS (standardised)",
            **baselines,  # type: ignore[arg-type]
        ),
        Row(
            group="language",
            task=f"{title}_embedding_probe",
            metric="accuracy",
            model=embedding_probe["model"],
            random_init=embedding_probe.get("random_init"),
            n_train=len(train_y),
            protocol=FROZEN,
            note="logistic regression on the served joint text embedding (/v1/embeddings)",
            **baselines,  # type: ignore[arg-type]
        ),
    ]


def task_wordnet(ex: Extractor, s: EvalSettings) -> list[Row]:
    """WordNet noun lexicographer category (26 classes) from the gloss."""
    return _text_classification_rows(ex, s, "wordnet", "wordnet_lexname")


def task_fortunes(ex: Extractor, s: EvalSettings) -> list[Row]:
    """Fortune-file category from the fortune text."""
    return _text_classification_rows(ex, s, "fortunes", "fortunes_category")


def heldout_mlm_loss(model: MoMoModel, batches: Sequence[tuple[torch.Tensor, ...]]) -> float:
    """Mean cross-entropy (nats) of `model`'s token head over the masked positions of `batches`
    ((masked_ids (B, L), labels (B, L) with -100 where not masked, attention_mask (B, L)))."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.no_grad():
        for masked, labels, mask in batches:
            hidden = model.encoder.encode_text(masked, mask)  # (B, L, D)
            selected = labels != -100
            logits = model.token_logits(hidden[selected])  # (M, V)
            total += float(F.cross_entropy(logits.float(), labels[selected], reduction="sum"))
            count += int(selected.sum())
    return total / max(1, count)


def task_mlm(ex: Extractor, s: EvalSettings) -> list[Row]:
    """Held-out MLM loss (lower is better) on the corpus test split."""
    import torch

    from training.data.formats import read_text_lines
    from training.masking import mask_tokens

    corpus = source_files(s.data_dir)["text"]
    lines = read_text_lines(require(corpus[s.split]["text"]))
    lines = [lines[i] for i in subsample(len(lines), s.max_mlm, s.seed)]
    tokenizer, config = ex.artifact.tokenizer, ex.config
    generator = torch.Generator().manual_seed(s.seed)
    batches = []
    for start in range(0, len(lines), s.batch_size):
        text = tokenizer.encode_batch(lines[start : start + s.batch_size], config.max_text_len)
        ids, mask = torch.from_numpy(text.input_ids), torch.from_numpy(text.attention_mask)
        masked, labels = mask_tokens(
            ids,
            mask,
            mask_id=tokenizer.mask_id,
            vocab_size=tokenizer.vocab_size,
            special_ids=tokenizer.special_ids,
            generator=generator,
            probability=MLM_EVAL_PROBABILITY,
        )
        batches.append((masked, labels, mask))
    losses: dict[str, float | None] = {}
    for name, runtime in ex.runtimes.items():
        if not runtime.artifact.heads.token_head:
            losses[name] = None
            continue
        losses[name] = heldout_mlm_loss(runtime.artifact.load_model("cpu"), batches)
    if losses.get("model") is None:
        raise TaskSkipped(f"{ex.artifact.reference} keeps no MLM token head (artifacts before momo-tiny:v2)")
    # the unigram model of the train corpus (add-one smoothed): the best loss without context
    train_lines = read_text_lines(require(corpus["train"]["text"]))
    sample = [train_lines[i] for i in subsample(len(train_lines), 50_000, s.seed)]
    counts: Counter[int] = Counter()
    for start in range(0, len(sample), 1024):
        text = tokenizer.encode_batch(sample[start : start + 1024], config.max_text_len)
        counts.update(text.input_ids[text.attention_mask.astype(bool)].tolist())
    denominator = sum(counts.values()) + tokenizer.vocab_size
    targets = torch.cat([labels[labels != -100] for _, labels, _ in batches]).tolist()
    unigram = float(np.mean([-math.log((counts[t] + 1) / denominator) for t in targets]))
    return [
        Row(
            group="language",
            task="heldout_mlm",
            metric="loss (nats)",
            model=losses["model"],
            random_init=losses.get("random_init"),
            trivial=unigram,
            trivial_name="unigram of the train corpus",
            n_test=len(lines),
            protocol="held-out loss",
            higher_is_better=False,
            note=f"{MLM_EVAL_PROBABILITY:.0%} of the tokens of {len(targets)} masked positions "
            "(80/10/10 BERT masking), lower is better",
        )
    ]
