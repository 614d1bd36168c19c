"""Write an `EvalResult`: JSON, a Markdown table, PNG bar charts; and its manifest summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.evaluation.common import (
    COLUMN_TITLES,
    COLUMNS,
    FROZEN,
    GROUPS,
    PAPER_PROTOCOLS,
    EvalResult,
    Row,
)

JSON_FILE = "eval.json"
MARKDOWN_FILE = "eval.md"


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _baseline(value: float | None, name: str) -> str:
    return "—" if value is None else f"{value:.3f} ({name})" if name else f"{value:.3f}"


def markdown(result: EvalResult) -> str:
    s = result.settings
    header = [
        "| group | task | metric | protocol | model | random weights | majority / chance "
        "| raw pixels / TF-IDF | n train | n test |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def table(rows: list[Row]) -> list[str]:
        out = list(header)
        for r in rows:
            metric = f"**{r.metric}**" if r.primary else r.metric
            out.append(
                f"| {r.group} | {r.task} | {metric} | {r.protocol or '—'} | {_fmt(r.model)} | "
                f"{_fmt(r.random_init)} | {_baseline(r.trivial, r.trivial_name)} | "
                f"{_baseline(r.feature, r.feature_name)} | {r.n_train or '—'} | {r.n_test} |"
            )
        return out

    protocols = "; ".join(f"{g}: {p}" for g, p in PAPER_PROTOCOLS.items())
    lines = [
        f"# Evaluation of `{result.model}`",
        "",
        f"Runtime {result.runtime}; evaluated {result.evaluated_at}; data `{s['data_dir']}` "
        f"({s.get('split', 'test')} splits); "
        f"seed {s['seed']}.",
        "",
        f"## The paper's protocol per group ({protocols})",
        "",
        "**Bold** metrics enter the macro averages. Losses are lower-is-better.",
        "",
        *table([r for r in result.rows if r.protocol != FROZEN]),
        "",
        "## Frozen features",
        "",
        "Linear probes on frozen features: the CLS, and the served joint embedding "
        "(what `/v1/embeddings` returns).",
        "",
        *table([r for r in result.rows if r.protocol == FROZEN]),
    ]
    lines += [
        "",
        "## Macro averages",
        "",
        "Unweighted mean of each task's **bold** score per group; *overall* is the mean of the group "
        "averages. A baseline has an average only where it applies to every task averaged.",
        "",
        "| | " + " | ".join(COLUMN_TITLES[c] for c in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for group in [*GROUPS, "overall"]:
        if any(group in result.macro.get(c, {}) for c in COLUMNS):
            cells = " | ".join(_fmt(result.macro.get(c, {}).get(group)) for c in COLUMNS)
            lines.append(f"| {group} | {cells} |")
    notes = sorted({f"{r.task}: {r.note}" for r in result.rows if r.note})
    if notes or result.skipped:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in notes]
        lines += [f"- **skipped** {item['task']}: {item['reason']}" for item in result.skipped]
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    lines += ["", f"Time per task: {timing}.", ""]
    return "\n".join(lines)


def _chart(rows: list[Row], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [f"{r.task}\n{r.metric}" for r in rows]
    columns = [c for c in COLUMNS if any(getattr(r, c) is not None for r in rows)]
    x = np.arange(len(rows))
    width = 0.8 / len(columns)
    fig, ax = plt.subplots(figsize=(max(5.0, 2.2 * len(rows) + 1.5), 4.2))
    for i, column in enumerate(columns):
        values = [getattr(r, column) for r in rows]
        heights = [np.nan if v is None else v for v in values]
        bars = ax.bar(x + (i - (len(columns) - 1) / 2) * width, heights, width, label=COLUMN_TITLES[column])
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    ax.set_xticks(x, [label.replace("_", " ") for label in labels], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _macro_chart(result: EvalResult, path: Path) -> None:
    rows = []
    for group in [*GROUPS, "overall"]:
        values = {c: result.macro.get(c, {}).get(group) for c in COLUMNS}
        if values["model"] is not None:
            row = Row(group="", task=group, metric="macro", model=values["model"])
            row.random_init, row.trivial, row.feature = (
                values["random_init"],
                values["trivial"],
                values["feature"],
            )
            rows.append(row)
    _chart(rows, f"{result.model}: macro averages", path)


def write_report(result: EvalResult, out: Path) -> list[Path]:
    """eval.json, eval.md, one PNG per group (each task's score beside its baselines) and macro.png
    (group and overall macro averages); returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / JSON_FILE, out / MARKDOWN_FILE]
    (out / JSON_FILE).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    (out / MARKDOWN_FILE).write_text(markdown(result))
    for group in GROUPS:
        rows = [r for r in result.rows if r.group == group and (r.primary or r.protocol == FROZEN)]
        if rows:
            path = out / f"{group}.png"
            _chart(rows, f"{result.model}: {group}", path)
            written.append(path)
    if result.rows:
        _macro_chart(result, out / "macro.png")
        written.append(out / "macro.png")
    return written


def manifest_metrics(result: EvalResult) -> dict[str, Any]:
    """The compact form stored in the artifact manifest under metrics["eval"]."""
    return {
        "evaluated_at": result.evaluated_at,
        "runtime": result.runtime,
        "scores": {f"{r.group}/{r.task}/{r.metric}": r.model for r in result.rows},
        "macro": result.macro.get("model", {}),
        "baselines_macro": {c: result.macro.get(c, {}) for c in COLUMNS if c != "model"},
        "items": {
            f"{r.task}/{r.metric}": {"train": r.n_train, "test": r.n_test} for r in result.rows if r.primary
        },
        "skipped": result.skipped,
        "settings": result.settings,
    }
