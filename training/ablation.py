"""`momo ablate`: the paper's claims as arms of one experiment, under the same budget.

Every arm (:mod:`training.ablation_arms`) is a transformation of one base recipe, so arms share data,
seeds and tokenizer; each is trained, then evaluated by the evaluation suite on held-out splits; key
arms repeat over seeds, read as mean ± spread (:mod:`training.ablation_report`). An interrupted or
extended study picks up where it was.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from training.ablation_arms import ARMS, CLAIMS
from training.ablation_report import GROUPS, ArmRun, markdown_table, plot, summarise, task_table
from training.recipe import Recipe

if TYPE_CHECKING:
    from momo.store import ModelStore

DEFAULT_ABLATION_RECIPE = Path(__file__).parent / "recipes" / "ablation.yaml"


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
