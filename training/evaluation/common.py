"""What every evaluation task shares: settings, the row of one figure, the result, data access."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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


# The paper's protocol per group (MoMo, like FLAVA): the group's macro average uses these rows.
PAPER_PROTOCOLS = {"vision": "linear probe", "language": "fine-tune", "multimodal": "zero-shot / heads"}
FROZEN = "frozen features"


@dataclass
class EvalSettings:
    data_dir: Path
    # what is scored: "test" (reported figures) or "val" (development, e.g. ablations: never tune on
    # test). The fine-tune protocol always selects its checkpoint on val.
    split: str = "test"
    max_train: int = 5000  # probe training items per task (subsampled from the train split)
    max_test: int = 2000  # probe / zero-shot test items per task (subsampled from the test split)
    # The language fine-tune protocol: one fixed budget for every model (the random twin included)
    finetune_steps: int = 600
    finetune_lr: float = 1e-4  # encoder; the new linear head learns 10x faster
    finetune_batch: int = 32
    finetune_eval_every: int = 150  # validation (val split) checkpoints; the best is scored on test
    max_finetune_train: int = 8000
    max_val: int = 1000
    max_mlm: int = 2000  # held-out corpus lines for the MLM loss
    max_itm: int = 600  # held-out images per ITM source (one true and one false caption each)
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
    protocol: str = ""  # "linear probe", "fine-tune", "zero-shot", FROZEN, ...
    higher_is_better: bool = True


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
def source_files(data_dir: Path) -> dict[str, Any]:
    from training.data.layout import source_paths

    return source_paths(data_dir)


def require(path: Path) -> Path:
    if not path.exists():
        raise TaskSkipped(f"{path} not found (run `momo data prepare`)")
    return path


def subsample(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a fixed random subset of at most `limit` of `n` items."""
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    from training.data.formats import iter_jsonl

    return [obj for _, obj in iter_jsonl(require(path))]


def batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
