"""What `momo ablate` (:mod:`training.ablation`) reports: one `ArmRun` per trained (arm, seed), their
summary over seeds (mean ± half the range per group score), the Markdown tables and the plots.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Any

GROUPS = ("vision", "language", "multimodal", "overall")
# The evaluation's baselines, as named in tables, and their line colours in the score plot.
BASELINES = {
    "random_init": ("random weights", "#c44e52"),
    "trivial": ("majority / chance", "#55a868"),
    "feature": ("raw features", None),
}


@dataclasses.dataclass
class ArmRun:
    arm: str
    seed: int
    reference: str
    parameters: int
    wall_seconds: float
    macro: dict[str, float | None]
    rows: list[dict[str, Any]]
    run_dir: str


def summarise(runs: list[ArmRun]) -> dict[str, dict[str, Any]]:
    """Per arm: mean and spread (half the max-min range) of every group score over seeds."""
    table: dict[str, dict[str, Any]] = {}
    for arm in dict.fromkeys(r.arm for r in runs):
        arm_runs = [r for r in runs if r.arm == arm]
        entry: dict[str, Any] = {
            "seeds": [r.seed for r in arm_runs],
            "parameters": arm_runs[0].parameters,
            "wall_seconds": statistics.fmean(r.wall_seconds for r in arm_runs),
        }
        for group in GROUPS:
            values = [r.macro.get(group) for r in arm_runs]
            clean = [v for v in values if v is not None]
            entry[group] = statistics.fmean(clean) if clean else None
            entry[f"{group}_spread"] = (max(clean) - min(clean)) / 2 if len(clean) > 1 else None
        table[arm] = entry
    return table


def markdown_table(table: dict[str, dict[str, Any]]) -> str:
    def cell(entry: dict[str, Any], group: str) -> str:
        value, spread = entry.get(group), entry.get(f"{group}_spread")
        if value is None:
            return "–"
        return f"{100 * value:.1f} ± {100 * spread:.1f}" if spread is not None else f"{100 * value:.1f}"

    lines = [
        "| arm | seeds | vision | language | multimodal | overall | parameters | wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, entry in table.items():
        lines.append(
            f"| {arm} | {len(entry['seeds'])} | {cell(entry, 'vision')} | {cell(entry, 'language')} | "
            f"{cell(entry, 'multimodal')} | {cell(entry, 'overall')} | {entry['parameters'] / 1e6:.2f} M | "
            f"{entry['wall_seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def task_table(runs: list[ArmRun]) -> str:
    """Rows = arms, columns = each task's primary metric (mean over seeds, %): where a macro moves."""
    columns = list(dict.fromkeys((r["task"], r["metric"]) for run in runs for r in run.rows if r["primary"]))
    lines = [
        "| arm | " + " | ".join(f"{task} ({metric})" for task, metric in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for arm in dict.fromkeys(run.arm for run in runs):
        cells = []
        for task, metric in columns:
            values = [
                r["model"]
                for run in runs
                if run.arm == arm
                for r in run.rows
                if (r["task"], r["metric"]) == (task, metric) and r["model"] is not None
            ]
            cells.append(f"{100 * statistics.fmean(values):.1f}" if values else "–")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    # The evaluation's baselines, from whichever run computed them (random weights: the first one).
    for key, (label, _) in BASELINES.items():
        cells = []
        for task, metric in columns:
            values = [
                r[key]
                for run in runs
                for r in run.rows
                if (r["task"], r["metric"]) == (task, metric) and r.get(key) is not None
            ]
            cells.append(f"{100 * values[0]:.1f}" if values else "–")
        lines.append(f"| *{label}* | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(
    table: dict[str, dict[str, Any]],
    runs: list[ArmRun],
    out_dir: Path,
    baselines: dict[str, dict[str, float | None]] | None = None,
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.run_log import read_metrics

    written = []
    arms = list(table)
    fig, axes = plt.subplots(1, len(GROUPS), figsize=(4.2 * len(GROUPS), 3.6), squeeze=False)
    for ax, group in zip(axes[0], GROUPS, strict=True):
        values = [100 * (table[a][group] or 0.0) for a in arms]
        spreads = [100 * (table[a].get(f"{group}_spread") or 0.0) for a in arms]
        ax.bar(
            arms,
            values,
            yerr=spreads,
            capsize=4,
            color=["#4c72b0" if a == "momo" else "#999999" for a in arms],
        )
        # The same command's baselines, so a bar is read against what no training already gives.
        drawn = False
        for name, (label, colour) in BASELINES.items():
            value = (baselines or {}).get(name, {}).get(group)
            if value is not None and colour is not None:
                ax.axhline(100 * value, color=colour, linestyle="--", linewidth=1, label=label)
                drawn = True
        if drawn:
            ax.legend(fontsize=7, loc="upper right")
        ax.set_title(f"{group} (macro avg, %)")
        ax.tick_params(axis="x", rotation=35)
    fig.tight_layout()
    path = out_dir / "ablation_scores.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    objectives = ("mim", "mlm", "itc", "itm", "mmm", "vqa")
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), squeeze=False)
    for ax, objective in zip(axes.flat, objectives, strict=True):
        for run in runs:
            if run.seed != runs[0].seed:
                continue
            rows = read_metrics(Path(run.run_dir) / "metrics.jsonl")
            points = []
            for row in rows:
                values = [v for k, v in row.items() if k.endswith(f"/{objective}")]
                if values:
                    points.append((row["global_step"], statistics.fmean(values)))
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], label=run.arm, linewidth=1)
        ax.set_title(objective)
        ax.set_xlabel("global step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "ablation_losses.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written
