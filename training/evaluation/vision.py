"""Vision tasks: image classification on Fashion-MNIST and on clip art (a source no objective's class
words were tuned for), each three ways.

- the paper's protocol: a linear probe (logistic regression) on the frozen image CLS;
- the served joint embedding (what ``/v1/embeddings`` returns for an image), probed the same way;
- zero-shot: the class prompt embedded by the text path, nearest class by cosine.

Baselines in the same run: the random-weights twin, the majority class (chance for zero-shot) and a
raw-pixel logistic regression (28×28 grayscale, the same for both datasets).
"""

from __future__ import annotations

import json
from pathlib import Path

from training.evaluation import metrics as M
from training.evaluation.common import FROZEN, EvalSettings, Row, read_jsonl, require, source_files, subsample
from training.evaluation.extractor import Extractor


def _image_class_rows(ex: Extractor, s: EvalSettings, source: str, title: str, prompt: str) -> list[Row]:
    paths = source_files(s.data_dir)[source]
    classes = json.loads(require(paths["test"]["classes"]).read_text())
    display = {c["name"]: c["label"] for c in classes}  # folder name -> human label
    names = [c["name"] for c in classes]

    def load(split: str, limit: int) -> tuple[list[Path], list[str]]:
        jsonl = require(paths[split]["pairs"])
        rows = read_jsonl(jsonl)
        chosen = subsample(len(rows), limit, s.seed)
        return [jsonl.parent / rows[i]["image"] for i in chosen], [str(rows[i]["label"]) for i in chosen]

    train_paths, train_y = load("train", s.max_train)
    test_paths, test_y = load(s.split, s.max_test)
    train, train_raw = ex.images(train_paths, f"{source} train", raw=True)
    test, test_raw = ex.images(test_paths, f"{source} test", raw=True)
    assert train_raw is not None and test_raw is not None

    def probe(feature: str) -> dict[str, float]:
        return {
            n: M.linear_probe(train[n][feature], train_y, test[n][feature], test_y, seed=s.seed)
            for n in ex.runtimes
        }

    cls_probe, embedding_probe = probe("cls"), probe("embedding")
    majority = M.majority_accuracy(train_y, test_y)
    raw_probe = M.linear_probe(train_raw, train_y, test_raw, test_y, seed=s.seed, standardize=False)
    class_emb = ex.texts([prompt.format(label=display[n]) for n in names], f"{source} prompts")
    zero_shot = {
        n: M.accuracy(
            [names[i] for i in M.zero_shot_predictions(test[n]["embedding"], class_emb[n]["embedding"])],
            test_y,
        )
        for n in ex.runtimes
    }
    common = {"group": "vision", "metric": "accuracy", "n_train": len(train_y), "n_test": len(test_y)}
    return [
        Row(
            task=f"{title}_linear_probe",
            model=cls_probe["model"],
            random_init=cls_probe.get("random_init"),
            trivial=majority,
            trivial_name="majority class",
            feature=raw_probe,
            feature_name="raw-pixel logistic regression",
            primary=True,
            protocol="linear probe",
            note="logistic regression on the frozen image CLS (standardised)",
            **common,  # type: ignore[arg-type]
        ),
        Row(
            task=f"{title}_embedding_probe",
            model=embedding_probe["model"],
            random_init=embedding_probe.get("random_init"),
            trivial=majority,
            trivial_name="majority class",
            feature=raw_probe,
            feature_name="raw-pixel logistic regression",
            protocol=FROZEN,
            note="logistic regression on the served joint image embedding (/v1/embeddings)",
            **common,  # type: ignore[arg-type]
        ),
        Row(
            task=f"{title}_zero_shot",
            model=zero_shot["model"],
            random_init=zero_shot.get("random_init"),
            trivial=1.0 / len(names),
            trivial_name="chance",
            protocol="zero-shot",
            note=f"prompt {prompt!r}, cosine of projected embeddings; majority class {majority:.3f}",
            **common,  # type: ignore[arg-type]
        ),
    ]


def task_fashion(ex: Extractor, s: EvalSettings) -> list[Row]:
    """Fashion-MNIST (10 classes)."""
    return _image_class_rows(ex, s, "fashion_mnist", "fashion_mnist", s.prompt)


def task_clipart(ex: Extractor, s: EvalSettings) -> list[Row]:
    """Open Clip Art categories (14 classes, imbalanced: see the majority class)."""
    return _image_class_rows(ex, s, "clipart", "clipart", "a clip art drawing of {label}")
