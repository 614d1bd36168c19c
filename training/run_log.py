"""A run's `metrics.jsonl`: one JSON line per logged step, read back for summaries and the loss plot.

A row is `{"stage", "step", "global_step", "<stream>/<loss>": value, ..., "samples_per_s", "time"}`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def is_loss_key(key: str) -> bool:
    """Metrics keys `<stream>/<loss>`; not accuracies or the skipped-sample counts."""
    return "/" in key and not key.endswith(("accuracy", "/skipped"))


def append_metrics(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(path: Path, global_step: int) -> None:
    """On resume, forget log lines written after the checkpoint (they will be written again)."""
    rows = [r for r in read_metrics(path) if r.get("global_step", 0) <= global_step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _mean_of(rows: list[dict[str, Any]], keys: set[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in keys:
        values = [r[key] for r in rows if key in r]
        if values:
            out[key] = sum(values) / len(values)
    return out


def summarise_losses(rows: list[dict[str, Any]], window: int = 5) -> tuple[dict[str, dict[str, float]], ...]:
    """Per stage: mean of each loss over the first and last `window` logged steps."""
    first: dict[str, dict[str, float]] = {}
    last: dict[str, dict[str, float]] = {}
    for stage in dict.fromkeys(r["stage"] for r in rows):
        stage_rows = [r for r in rows if r["stage"] == stage]
        keys = {k for r in stage_rows for k in r if is_loss_key(k)}
        first[stage] = _mean_of(stage_rows[:window], keys)
        last[stage] = _mean_of(stage_rows[-window:], keys)
    return first, last


def plot_losses(rows: list[dict[str, Any]], path: Path) -> None:
    """One panel per stage, one line per stream/objective loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(dict.fromkeys(r["stage"] for r in rows))
    if not stages:
        return
    fig, axes = plt.subplots(1, len(stages), figsize=(4.5 * len(stages), 3.6), squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=True):
        stage_rows = [r for r in rows if r["stage"] == stage]
        keys = sorted({k for r in stage_rows for k in r if is_loss_key(k)})
        for key in keys:
            points = [(r["step"], r[key]) for r in stage_rows if key in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], label=key)
        ax.set_title(f"stage: {stage}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
