"""The evaluation suite: the paper's three groups on held-out (test) splits, with baselines.

- vision: Fashion-MNIST linear probe on frozen image CLS features (logistic regression fit on a train
  subset, scored on test) and zero-shot classification (prompt "a photo of a {label}" embedded by the
  text path, nearest class by cosine to the image embedding);
- language: WordNet noun lexicographer category and fortunes category, linear probes on the text CLS;
- multimodal: shapes-world and emoji retrieval (R@1/5/10, image→text and text→image) and VQA accuracy
  on held-out shapes questions (overall and per question type) from the artifact's "vqa" head.

Beside every figure, in the same run: the same preset with random weights (all tasks), a trivial
baseline (majority class / chance / majority answer) and a feature baseline where one applies
(raw-pixel logistic regression for the Fashion-MNIST probe, TF-IDF + logistic regression for text).
Features come from a `momo.runtime.Runtime` (ONNX Runtime by default). Subsets are drawn with a fixed
seed and every row records how many items it used.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from momo.artifact import Artifact
from momo.runtime import Runtime
from training.evaluation import metrics as M

GROUPS = ("vision", "language", "multimodal")
COLUMNS = ("model", "random_init", "trivial", "feature")
RANDOM_INIT_SEED_OFFSET = 1_000_003
COLUMN_TITLES = {
    "model": "model",
    "random_init": "random weights",
    "trivial": "majority / chance",
    "feature": "raw pixels / TF-IDF",
}


@dataclass
class EvalSettings:
    data_dir: Path
    max_train: int = 5000  # probe training items per task (subsampled from the train split)
    max_test: int = 2000  # probe / zero-shot test items per task (subsampled from the test split)
    max_retrieval: int = 1000  # retrieval candidates per side (test split)
    max_vqa: int = 5000  # VQA test questions
    batch_size: int = 64
    seed: int = 0
    prompt: str = "a photo of a {label}"
    groups: tuple[str, ...] = GROUPS
    random_baseline: bool = True
    progress: bool = True


@dataclass
class Row:
    """One figure: the model's value beside its baselines (None where a baseline does not apply)."""

    group: str
    task: str
    metric: str
    model: float | None
    random_init: float | None = None
    trivial: float | None = None
    feature: float | None = None
    trivial_name: str = ""
    feature_name: str = ""
    n_train: int = 0
    n_test: int = 0
    primary: bool = False  # this row is the task's score in the macro averages
    note: str = ""


@dataclass
class EvalResult:
    model: str
    runtime: str
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    macro: dict[str, dict[str, float | None]] = field(default_factory=dict)
    evaluated_at: str = ""

    def compute_macro(self) -> None:
        """Per column: macro average of the primary rows per group and over the groups. A baseline
        gets a group (or overall) average only where it covers every task of it, so that its average
        is comparable with the model's; the model's average skips nothing (no task lacks it)."""
        for column in COLUMNS:
            scores: dict[str, dict[str, float | None]] = {}
            for row in self.rows:
                if row.primary:
                    scores.setdefault(row.group, {})[row.task] = getattr(row, column)
            self.macro[column] = M.macro_by_group(scores, complete=column != "model")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "runtime": self.runtime,
            "evaluated_at": self.evaluated_at,
            "settings": self.settings,
            "rows": [asdict(r) for r in self.rows],
            "macro": self.macro,
            "skipped": self.skipped,
            "seconds": self.seconds,
        }


class TaskSkipped(Exception):
    """A task cannot run (data not prepared, head missing); the reason goes into the report."""


# --- data access --------------------------------------------------------------------------------
def _paths(data_dir: Path) -> dict[str, Any]:
    from training.data.prepare import source_paths

    return source_paths(data_dir)


def _require(path: Path) -> Path:
    if not path.exists():
        raise TaskSkipped(f"{path} not found (run `momo data prepare`)")
    return path


def _subsample(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a fixed random subset of at most `limit` of `n` items."""
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    from training.data.formats import iter_jsonl

    return [obj for _, obj in iter_jsonl(_require(path))]


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


# --- feature extraction (all runtimes in one pass over the data) --------------------------------
class Extractor:
    def __init__(self, runtimes: dict[str, Runtime], settings: EvalSettings):
        self.runtimes = runtimes
        self.settings = settings
        any_runtime = next(iter(runtimes.values()))
        self.artifact: Artifact = any_runtime.artifact
        self.config = self.artifact.config

    def _bar(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, leave=False, disable=not self.settings.progress, unit="item")

    def load_pixels(self, paths: Sequence[Path], raw: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Preprocessed (B, C, H, W) pixels, plus (B, 784) raw grayscale 28×28 pixels in [0, 1] if asked."""
        from momo.preprocess import load_image_file, preprocess_images

        images = [load_image_file(p) for p in paths]
        pixels = preprocess_images(images, self.config)
        raw_pixels = None
        if raw:
            raw_pixels = np.stack(
                [
                    np.asarray(im.convert("L").resize((28, 28)), dtype=np.float32).reshape(-1) / 255.0
                    for im in images
                ]
            )
        return pixels, raw_pixels

    def images(
        self, paths: Sequence[Path], desc: str, raw: bool = False
    ) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray | None]:
        """{runtime name: {"embedding": (N, E), "cls": (N, D)}} and optional raw pixels (N, 784)."""
        outs: dict[str, dict[str, list[np.ndarray]]] = {
            n: {"embedding": [], "cls": []} for n in self.runtimes
        }
        raws: list[np.ndarray] = []
        with self._bar(len(paths), desc) as bar:
            for part in _batches(len(paths), self.settings.batch_size):
                pixels, raw_pixels = self.load_pixels(paths[part], raw)
                if raw_pixels is not None:
                    raws.append(raw_pixels)
                for name, runtime in self.runtimes.items():
                    result = runtime.image_outputs(pixels)
                    outs[name]["embedding"].append(result["embedding"])
                    outs[name]["cls"].append(result["cls"])
                bar.update(len(pixels))
        stacked = {n: {k: np.concatenate(v) for k, v in o.items()} for n, o in outs.items()}
        return stacked, (np.concatenate(raws) if raw else None)

    def texts(self, texts: Sequence[str], desc: str) -> dict[str, dict[str, np.ndarray]]:
        """{runtime name: {"embedding": (N, E), "cls": (N, D)}} for `texts`."""
        outs: dict[str, dict[str, list[np.ndarray]]] = {
            n: {"embedding": [], "cls": []} for n in self.runtimes
        }
        tokenizer = self.artifact.tokenizer
        with self._bar(len(texts), desc) as bar:
            for part in _batches(len(texts), self.settings.batch_size):
                batch = tokenizer.encode_batch(list(texts[part]), max_length=self.config.max_text_len)
                for name, runtime in self.runtimes.items():
                    result = runtime.text_outputs(batch.input_ids, batch.attention_mask)
                    outs[name]["embedding"].append(result["embedding"])
                    outs[name]["cls"].append(result["cls"])
                bar.update(len(batch.input_ids))
        return {n: {k: np.concatenate(v) for k, v in o.items()} for n, o in outs.items()}

    def vqa_logits(
        self, image_index: np.ndarray, pixels: np.ndarray, questions: Sequence[str], desc: str
    ) -> dict[str, np.ndarray]:
        """{runtime name: (N, A) VQA logits}; question i is asked about pixels[image_index[i]]."""
        outs: dict[str, list[np.ndarray]] = {n: [] for n in self.runtimes}
        tokenizer = self.artifact.tokenizer
        with self._bar(len(questions), desc) as bar:
            for part in _batches(len(questions), self.settings.batch_size):
                batch = tokenizer.encode_batch(list(questions[part]), max_length=self.config.max_text_len)
                batch_pixels = pixels[image_index[part]]
                for name, runtime in self.runtimes.items():
                    outs[name].append(
                        runtime.head_logits("vqa", batch_pixels, batch.input_ids, batch.attention_mask)
                    )
                bar.update(len(batch.input_ids))
        return {n: np.concatenate(v) for n, v in outs.items()}


# --- tasks ---------------------------------------------------------------------------------------
def _value(features: dict[str, Any], name: str, fn: Callable[[Any], float]) -> float | None:
    return fn(features[name]) if name in features else None


def task_fashion(ex: Extractor, s: EvalSettings) -> list[Row]:
    """Fashion-MNIST: linear probe on the image CLS, and zero-shot classification."""
    paths = _paths(s.data_dir)["fashion_mnist"]
    classes = json.loads(_require(paths["test"]["classes"]).read_text())
    display = {c["name"]: c["label"] for c in classes}  # folder name -> human label
    names = [c["name"] for c in classes]

    def load(split: str, limit: int) -> tuple[list[Path], list[str]]:
        jsonl = _require(paths[split]["pairs"])
        rows = _read_jsonl(jsonl)
        chosen = _subsample(len(rows), limit, s.seed)
        return [jsonl.parent / rows[i]["image"] for i in chosen], [str(rows[i]["label"]) for i in chosen]

    train_paths, train_y = load("train", s.max_train)
    test_paths, test_y = load("test", s.max_test)
    train, train_raw = ex.images(train_paths, "fashion train", raw=True)
    test, test_raw = ex.images(test_paths, "fashion test", raw=True)
    assert train_raw is not None and test_raw is not None
    probe = {
        n: M.linear_probe(train[n]["cls"], train_y, test[n]["cls"], test_y, seed=s.seed) for n in ex.runtimes
    }
    majority = M.majority_accuracy(train_y, test_y)
    raw_probe = M.linear_probe(train_raw, train_y, test_raw, test_y, seed=s.seed, standardize=False)
    prompts = [s.prompt.format(label=display[n]) for n in names]
    class_emb = ex.texts(prompts, "fashion prompts")
    zero_shot = {
        n: M.accuracy(
            [names[i] for i in M.zero_shot_predictions(test[n]["embedding"], class_emb[n]["embedding"])],
            test_y,
        )
        for n in ex.runtimes
    }
    probe_row = Row(
        group="vision",
        task="fashion_mnist_linear_probe",
        metric="accuracy",
        model=probe["model"],
        random_init=probe.get("random_init"),
        trivial=majority,
        trivial_name="majority class",
        feature=raw_probe,
        feature_name="raw-pixel logistic regression",
        n_train=len(train_y),
        n_test=len(test_y),
        primary=True,
        note="logistic regression on the frozen image CLS (standardised)",
    )
    zero_shot_row = Row(
        group="vision",
        task="fashion_mnist_zero_shot",
        metric="accuracy",
        model=zero_shot["model"],
        random_init=zero_shot.get("random_init"),
        trivial=majority,
        trivial_name="majority class",
        n_test=len(test_y),
        primary=True,
        note=f"prompt {s.prompt!r}, cosine of projected embeddings",
    )
    return [probe_row, zero_shot_row]


def _task_text_probe(ex: Extractor, s: EvalSettings, source: str, task: str) -> list[Row]:
    paths = _paths(s.data_dir)[source]

    def load(split: str, limit: int) -> tuple[list[str], list[str]]:
        rows = _read_jsonl(paths[split]["labeled_text"])
        chosen = _subsample(len(rows), limit, s.seed)
        return [str(rows[i]["text"]) for i in chosen], [str(rows[i]["label"]) for i in chosen]

    train_x, train_y = load("train", s.max_train)
    test_x, test_y = load("test", s.max_test)
    train = ex.texts(train_x, f"{source} train")
    test = ex.texts(test_x, f"{source} test")
    probe = {
        n: M.linear_probe(train[n]["cls"], train_y, test[n]["cls"], test_y, seed=s.seed) for n in ex.runtimes
    }
    row = Row(
        group="language",
        task=task,
        metric="accuracy",
        model=probe["model"],
        random_init=probe.get("random_init"),
        trivial=M.majority_accuracy(train_y, test_y),
        trivial_name="majority class",
        feature=M.tfidf_probe(train_x, train_y, test_x, test_y, seed=s.seed),
        feature_name="TF-IDF + logistic regression",
        n_train=len(train_y),
        n_test=len(test_y),
        primary=True,
        note="logistic regression on the frozen text CLS (standardised)",
    )
    return [row]


def task_wordnet(ex: Extractor, s: EvalSettings) -> list[Row]:
    """WordNet noun lexicographer category (26 classes) from the gloss."""
    return _task_text_probe(ex, s, "wordnet", "wordnet_lexname_probe")


def task_fortunes(ex: Extractor, s: EvalSettings) -> list[Row]:
    """Fortune-file category from the fortune text."""
    return _task_text_probe(ex, s, "fortunes", "fortunes_category_probe")


def _task_retrieval(ex: Extractor, s: EvalSettings, source: str, task: str) -> list[Row]:
    jsonl = _require(_paths(s.data_dir)[source]["test"]["pairs"])
    rows = _read_jsonl(jsonl)
    chosen = _subsample(len(rows), s.max_retrieval, s.seed)
    image_paths = [jsonl.parent / rows[i]["image"] for i in chosen]
    captions = [str(rows[i]["text"]) for i in chosen]
    if len(chosen) < 2:
        raise TaskSkipped(f"{jsonl}: fewer than 2 test pairs")
    relevance = M.relevance_from_keys(captions, captions)  # (N, N): identical captions count as hits
    images, _ = ex.images(image_paths, f"{source} images")
    texts = ex.texts(captions, f"{source} captions")
    recalls = {
        n: M.bidirectional_recall(images[n]["embedding"], texts[n]["embedding"], relevance)
        for n in ex.runtimes
    }
    chance = M.chance_bidirectional_recall(relevance)
    out = []
    for metric in [*(f"{d}_R@{k}" for d in ("i2t", "t2i") for k in M.DEFAULT_KS), "mean"]:
        out.append(
            Row(
                group="multimodal",
                task=task,
                metric="mean recall" if metric == "mean" else metric,
                model=recalls["model"][metric],
                random_init=recalls["random_init"][metric] if "random_init" in recalls else None,
                trivial=chance[metric],
                trivial_name="chance",
                n_test=len(chosen),
                primary=metric == "mean",
                note="mean of R@1/5/10 in both directions; identical captions count as hits"
                if metric == "mean"
                else "",
            )
        )
    return out


def task_shapes_retrieval(ex: Extractor, s: EvalSettings) -> list[Row]:
    """Shapes-world image↔caption retrieval on the test scenes."""
    return _task_retrieval(ex, s, "shapes", "shapes_retrieval")


def task_emoji_retrieval(ex: Extractor, s: EvalSettings) -> list[Row]:
    """Emoji image↔name retrieval on the test emoji."""
    return _task_retrieval(ex, s, "emoji", "emoji_retrieval")


def task_vqa(ex: Extractor, s: EvalSettings) -> list[Row]:
    """Shapes VQA accuracy (overall and per question type) through the artifact's "vqa" head."""
    if "vqa" not in ex.artifact.heads.heads:
        raise TaskSkipped(f"{ex.artifact.reference} has no 'vqa' head (fine-tune one, then evaluate again)")
    labels = ex.artifact.heads.heads["vqa"].labels
    paths = _paths(s.data_dir)["shapes"]
    train = _read_jsonl(paths["train"]["vqa"])
    test_file = _require(paths["test"]["vqa"])
    test_all = _read_jsonl(test_file)
    chosen = _subsample(len(test_all), s.max_vqa, s.seed)
    test = [test_all[i] for i in chosen]
    gold = [str(q["answer"]) for q in test]
    types = [str(q.get("type") or "all") for q in test]
    unique = sorted({str(q["image"]) for q in test})
    position = {name: i for i, name in enumerate(unique)}
    pixels = np.concatenate(
        [
            ex.load_pixels([test_file.parent / u for u in unique[part]])[0]
            for part in _batches(len(unique), 256)
        ]
    )
    image_index = np.asarray([position[str(q["image"])] for q in test])
    logits = ex.vqa_logits(image_index, pixels, [str(q["question"]) for q in test], "shapes vqa")
    predicted = {n: [labels[j] for j in v.argmax(axis=1)] for n, v in logits.items()}
    train_answers = [str(q["answer"]) for q in train]
    train_types = [str(q.get("type") or "all") for q in train]
    coverage = float(np.mean([g in labels for g in gold]))
    rows = [
        Row(
            group="multimodal",
            task="shapes_vqa",
            metric="accuracy",
            model=M.accuracy(predicted["model"], gold),
            random_init=M.accuracy(predicted["random_init"], gold) if "random_init" in predicted else None,
            trivial=M.majority_accuracy(train_answers, gold),
            trivial_name="majority answer",
            n_train=len(train),
            n_test=len(test),
            primary=True,
            note=f"{coverage:.0%} of test answers are in the head's vocabulary; per type, the trivial "
            "baseline is the type's majority answer",
        )
    ]
    per_type = {n: M.per_type_accuracy(p, gold, types) for n, p in predicted.items()}
    type_majority = M.per_type_majority_accuracy(train_answers, train_types, gold, types)
    for kind in sorted(set(types)):
        rows.append(
            Row(
                group="multimodal",
                task="shapes_vqa",
                metric=f"accuracy[{kind}]",
                model=per_type["model"][kind],
                random_init=per_type["random_init"][kind] if "random_init" in per_type else None,
                trivial=type_majority[kind],
                trivial_name="type majority",
                n_train=len(train),
                n_test=types.count(kind),
            )
        )
    return rows


TASKS: dict[str, tuple[str, Callable[[Extractor, EvalSettings], list[Row]]]] = {
    "fashion_mnist": ("vision", task_fashion),
    "wordnet": ("language", task_wordnet),
    "fortunes": ("language", task_fortunes),
    "shapes_retrieval": ("multimodal", task_shapes_retrieval),
    "emoji_retrieval": ("multimodal", task_emoji_retrieval),
    "shapes_vqa": ("multimodal", task_vqa),
}


# --- driver --------------------------------------------------------------------------------------
def random_init_artifact(artifact: Artifact, directory: Path, seed: int = 0) -> Path:
    """The same preset, heads and tokenizer with freshly initialised weights, saved under `directory`."""
    import torch

    from momo.artifact import Manifest, save_artifact
    from momo.model import MoMoModel

    torch.manual_seed(RANDOM_INIT_SEED_OFFSET + seed)  # never the seed a test/random artifact used
    model = MoMoModel(
        artifact.config, head_specs=dict(artifact.heads.heads), temperature=artifact.heads.temperature
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
