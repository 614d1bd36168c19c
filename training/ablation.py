"""`momo ablate`: the paper's claims as arms of one experiment, under the same budget.

Arms (each a transformation of one base recipe, so they share data, seeds and tokenizer):
- `momo`        — one shared encoder, three pretraining stages, simultaneous updates (the method);
- `separate`    — FLAVA-style image tower + text tower + fusion encoder (`towers: separate`);
- `all_at_once` — every pretraining stream and objective from step 0, in one stage of the same
                  total steps (so every stream runs on every step: more samples and compute);
- `all_at_once_matched` — the same, with each stream's batch scaled by its stage's share of the
                  steps, so every stream sees the samples it sees in the staged recipe;
- `alternating` — one stream per step; steps × streams, so each stream sees as many samples;
- `small`       — the same recipe on `momo-small` (scale).
The `downstream` stage (VQA head + projection) is the same in every arm. Every arm is evaluated by
the evaluation suite on held-out splits; key arms repeat over seeds, read as mean ± spread.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from training.recipe import Recipe, StageSpec

if TYPE_CHECKING:
    from momo.store import ModelStore

DEFAULT_ABLATION_RECIPE = Path(__file__).parent / "recipes" / "ablation.yaml"
DOWNSTREAM = "downstream"
GROUPS = ("vision", "language", "multimodal", "overall")
# The evaluation's baselines, as named in tables, and their line colours in the score plot.
BASELINES = {
    "random_init": ("random weights", "#c44e52"),
    "trivial": ("majority / chance", "#55a868"),
    "feature": ("raw features", None),
}


def _pretraining_and_downstream(recipe: Recipe) -> tuple[list[StageSpec], list[StageSpec]]:
    pre = [s for s in recipe.stages if s.name != DOWNSTREAM]
    post = [s for s in recipe.stages if s.name == DOWNSTREAM]
    return pre, post


def arm_momo(recipe: Recipe) -> Recipe:
    return recipe


def arm_separate(recipe: Recipe) -> Recipe:
    return dataclasses.replace(recipe, config={**recipe.config, "towers": "separate"})


def arm_all_at_once(recipe: Recipe) -> Recipe:
    """One pretraining stage with every stream (and its objectives) of every pretraining stage."""
    pre, post = _pretraining_and_downstream(recipe)
    streams = []
    seen: set[str] = set()
    for stage in pre:
        for stream in stage.streams:
            name = stream.name if stream.name not in seen else f"{stage.name}_{stream.name}"
            seen.add(name)
            streams.append(dataclasses.replace(stream, name=name))
    weights: dict[str, float] = {}
    options: dict[str, dict[str, Any]] = {}
    for stage in pre:
        weights.update(stage.weights)
        options.update(stage.objective_options)
    merged = StageSpec(
        name="all_at_once",
        steps=sum(s.steps for s in pre),
        streams=streams,
        lr=statistics.fmean(s.lr for s in pre),
        warmup_steps=pre[0].warmup_steps,
        weight_decay=pre[0].weight_decay,
        weights=weights,
        objective_options=options,
        log_every=pre[0].log_every,
    )
    return dataclasses.replace(recipe, stages=[merged, *post])


def arm_all_at_once_matched(recipe: Recipe) -> Recipe:
    """All-at-once with the staged recipe's samples per stream (and so about its compute).

    A stream of a stage with `s` of the `S` pretraining steps runs on all `S` steps here, with
    `batch × s / S` items (at least 2): `steps × batch` per stream matches the staged arm. Contrastive
    streams then see fewer in-batch negatives per step, which is the price of the match.
    """
    pre, _ = _pretraining_and_downstream(recipe)
    total = sum(s.steps for s in pre)
    batches = [
        max(2, round(stream.batch_size * stage.steps / total)) for stage in pre for stream in stage.streams
    ]
    merged_recipe = arm_all_at_once(recipe)
    merged = merged_recipe.stages[0]
    # arm_all_at_once keeps the streams in stage order, so they line up with `batches`.
    streams = [
        dataclasses.replace(stream, batch_size=batch)
        for stream, batch in zip(merged.streams, batches, strict=True)
    ]
    return dataclasses.replace(
        merged_recipe, stages=[dataclasses.replace(merged, streams=streams), *merged_recipe.stages[1:]]
    )


def arm_alternating(recipe: Recipe) -> Recipe:
    """One stream per step (round-robin); steps × streams so every stream sees the same samples."""
    pre, post = _pretraining_and_downstream(recipe)
    stages = [
        dataclasses.replace(s, mode="alternating", steps=s.steps * len(s.streams), log_every=s.log_every * 2)
        for s in pre
    ]
    return dataclasses.replace(recipe, stages=[*stages, *post])


def arm_small(recipe: Recipe) -> Recipe:
    return dataclasses.replace(recipe, preset="momo-small")


ARMS: dict[str, Callable[[Recipe], Recipe]] = {
    "momo": arm_momo,
    "separate": arm_separate,
    "all_at_once": arm_all_at_once,
    "all_at_once_matched": arm_all_at_once_matched,
    "alternating": arm_alternating,
    "small": arm_small,
}
CLAIMS = {
    "separate": "shared vs separate encoders",
    "all_at_once": "stage-wise vs all-at-once (same steps)",
    "all_at_once_matched": "stage-wise vs all-at-once (same samples per stream)",
    "alternating": "simultaneous vs alternating updates",
    "small": "scale (tiny vs small)",
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


def _ran_recipe(run_dir: Path, recipe: Recipe) -> bool | None:
    """Whether `run_dir` was trained with `recipe` (None: nothing was trained there yet)."""
    from training.recipe import load_recipe

    saved = run_dir / "recipe.yaml"
    if not saved.exists():
        return None
    return load_recipe(saved).to_dict() == recipe.to_dict()


def _is_same_run(run: ArmRun, recipe: Recipe, store: ModelStore) -> bool:
    from momo.store import StoreError

    if not _ran_recipe(Path(run.run_dir), recipe):
        return False
    try:
        store.resolve(run.reference)
    except StoreError:
        return False
    return True


def run_ablation(
    base: Recipe,
    out_dir: Path,
    *,
    arms: list[str],
    seeds: list[int],
    key_arms: list[str],
    budget: float = 1.0,
    eval_settings: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and evaluate every arm; write ablation.json, ablation.md and the plots into out_dir."""
    from momo.model import count_parameters
    from momo.store import ModelStore
    from momo.tokenizer import MoMoTokenizer
    from training.data.formats import read_text_lines
    from training.engine import resolve_paths
    from training.evaluation.suite import EvalSettings, evaluate
    from training.pretrain import run_pretraining

    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; known: {list(ARMS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    base = base.scaled(budget) if budget != 1.0 else base
    data_dir = Path(base.data_dir)
    # One tokenizer for every arm, so arms differ only in what they claim to.
    tokenizer_path = out_dir / "tokenizer.json"
    if not tokenizer_path.exists():
        given = base.tokenizer.get("path")
        if given:
            shutil.copyfile(resolve_paths(data_dir, [given])[0], tokenizer_path)
        else:
            corpus = [
                t
                for p in resolve_paths(data_dir, list(base.tokenizer.get("corpus", [])))
                for t in read_text_lines(p)
            ]
            if not corpus:
                raise ValueError("the base recipe names no tokenizer corpus")
            config = base.model_config()
            MoMoTokenizer.train(corpus, config.vocab_size, int(base.tokenizer.get("min_frequency", 2))).save(
                tokenizer_path
            )
    base = dataclasses.replace(base, tokenizer={"path": str(tokenizer_path.resolve())})
    store = ModelStore(out_dir / "store")
    settings = EvalSettings(data_dir=data_dir, progress=progress, **(eval_settings or {}))
    runs: list[ArmRun] = []
    baselines: dict[str, Any] = {}
    plan = [(arm, seed) for arm in arms for seed in (seeds if arm in key_arms else seeds[:1])]
    # An interrupted or extended study picks up where it was: a finished (arm, seed) is reused when
    # its run directory holds the very recipe planned now and its model is still in the store.
    runs_path = out_dir / "ablation_runs.json"
    finished: dict[tuple[str, int], ArmRun] = {}
    if runs_path.exists():
        finished = {(r.arm, r.seed): r for r in (ArmRun(**raw) for raw in json.loads(runs_path.read_text()))}
    # Baselines depend on the evaluation settings only; a previous report's are kept when those match.
    eval_record = json.loads(json.dumps(eval_settings or {}))
    report_path = out_dir / "ablation.json"
    if report_path.exists():
        previous_report = json.loads(report_path.read_text())
        if previous_report.get("eval_settings") == eval_record:
            baselines = previous_report.get("baselines_macro") or {}
    for index, (arm, seed) in enumerate(plan, start=1):
        recipe = dataclasses.replace(ARMS[arm](base), seed=seed, name=f"ablation-{arm}")
        run_dir = out_dir / "runs" / f"{arm}-seed{seed}"
        previous = finished.get((arm, seed))
        if previous is not None and _is_same_run(previous, recipe, store):
            log(f"[{index}/{len(plan)}] arm {arm} seed {seed}: reused from {run_dir}")
            runs.append(previous)
            continue
        log(f"[{index}/{len(plan)}] arm {arm} seed {seed}: {sum(s.steps for s in recipe.stages)} steps")
        if _ran_recipe(run_dir, recipe) is False:
            # Its checkpoints belong to another recipe (e.g. another --budget): resuming would mix them.
            log(f"{run_dir} was trained with another recipe: training this arm from scratch")
            shutil.rmtree(run_dir)
        started = time.perf_counter()
        result = run_pretraining(
            recipe,
            run_dir,
            resume="auto",
            progress=progress,
            register_name=f"ablation-{arm}",
            store_root=store.root,
        )
        wall = time.perf_counter() - started
        assert result.reference is not None
        # Baselines (random weights, majority, raw features) once, beside the first arm evaluated.
        settings_arm = dataclasses.replace(settings, random_baseline=not baselines, seed=0)
        evaluation = evaluate(store.load(result.reference), settings_arm, log=log)
        run = ArmRun(
            arm,
            seed,
            result.reference,
            count_parameters(recipe.model_config()),
            result.wall_seconds or wall,
            {g: evaluation.macro["model"].get(g) for g in GROUPS},
            [dataclasses.asdict(r) for r in evaluation.rows],
            str(run_dir),
        )
        runs.append(run)
        if not baselines:
            baselines = {c: evaluation.macro.get(c, {}) for c in ("random_init", "trivial", "feature")}
        finished[(arm, seed)] = run
        runs_path.write_text(json.dumps([dataclasses.asdict(r) for r in finished.values()], indent=2))
    table = summarise(runs)
    report = {
        "budget": budget,
        "seeds": seeds,
        "key_arms": key_arms,
        "eval_settings": eval_record,
        "claims": CLAIMS,
        "table": table,
        "baselines_macro": baselines,
        "runs": [dataclasses.asdict(r) for r in runs],
    }
    (out_dir / "ablation.json").write_text(json.dumps(report, indent=2))
    markdown = markdown_table(table)
    per_task = task_table(runs)
    (out_dir / "ablation.md").write_text(
        f"{markdown}\n\nPer task (primary metric, mean over seeds, %):\n\n{per_task}\n"
    )
    plot(table, runs, out_dir, baselines)
    return report


def register(app: typer.Typer) -> None:
    @app.command("ablate")
    def ablate(
        config: Annotated[Path, typer.Option("--config", help="Base recipe.")] = DEFAULT_ABLATION_RECIPE,
        out: Annotated[Path, typer.Option("--out")] = Path("runs/ablation"),
        arms: Annotated[str, typer.Option("--arms")] = ",".join(ARMS),
        seeds: Annotated[str, typer.Option("--seeds", help="Seeds for the key arms.")] = "0,1",
        key_arms: Annotated[str, typer.Option("--key-arms")] = "momo,separate",
        budget: Annotated[float, typer.Option("--budget", help="Scale every arm's steps together.")] = 1.0,
        data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="MOMO_DATA_DIR")] = None,
    ) -> None:
        """Train every arm under the same budget and evaluate each (table + plots in --out)."""
        from training.recipe import load_recipe

        base = load_recipe(config, data_dir=str(data_dir) if data_dir else None)
        report = run_ablation(
            base,
            out,
            arms=arms.split(","),
            seeds=[int(s) for s in seeds.split(",")],
            key_arms=key_arms.split(","),
            budget=budget,
            eval_settings={"max_train": 2000, "max_test": 1000, "max_retrieval": 500, "max_vqa": 2000},
        )
        typer.echo(markdown_table(report["table"]))
        typer.echo(f"written: {out}/ablation.json, ablation.md, ablation_scores.png, ablation_losses.png")
