"""`momo pretrain`: run a staged recipe, checkpointing and resumable, and register the artifact.

Layout of a run directory (`--out`):
    recipe.yaml         the resolved recipe (after --stages/--budget/overrides)
    config.json         the model config
    tokenizer.json      trained on the recipe's corpus (once; reused on resume)
    metrics.jsonl       one line per logged step (losses, lr, throughput)
    loss_curves.png     loss per objective per stage
    checkpoints/        stage<i>-step<n>.pt and last.pt
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from tqdm import tqdm

DEFAULT_RECIPE = Path(__file__).parent / "recipes" / "default.yaml"


@dataclass
class RunResult:
    out_dir: Path
    final_losses: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> loss -> value
    first_losses: dict[str, dict[str, float]] = field(default_factory=dict)
    wall_seconds: float = 0.0
    steps: dict[str, int] = field(default_factory=dict)
    reference: str | None = None
    stopped_early: bool = False
    model: Any = None  # MoMoModel


def run_pretraining(
    recipe: Any,  # training.recipe.Recipe
    out_dir: Path,
    *,
    resume: Path | str | None = None,
    init_from: Path | None = None,
    device: str = "auto",
    stop_after: int | None = None,
    progress: bool = True,
    register_name: str | None = None,
    store_root: Path | None = None,
) -> RunResult:
    """Run every stage of `recipe`; see the module docstring for what lands in `out_dir`.

    resume: a checkpoint path, or "auto" for `out_dir/checkpoints/last.pt` when present.
    stop_after: stop (after checkpointing) once this many global steps are done — an interruption.
    """
    import torch

    from momo.artifact import Manifest, save_artifact
    from momo.heads import ITM_SPEC, HeadSpec
    from momo.model import MoMoEncoder, MoMoModel
    from momo.store import ModelStore
    from momo.tokenizer import MoMoTokenizer
    from training import engine, run_log
    from training.data.formats import read_text_lines
    from training.distributed import Replicated, init_distributed
    from training.recipe import save_recipe
    from training.stream_loader import StreamLoader
    from training.streams import StreamSource

    started = time.perf_counter()
    dev = engine.resolve_device(device)
    dist_info = init_distributed(dev)
    if dev.type == "cuda" and dist_info.world > 1:
        dev = torch.device("cuda", dist_info.local_rank)
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    metrics_path = out_dir / "metrics.jsonl"
    data_dir = Path(recipe.data_dir)
    config = recipe.model_config()

    checkpoint: dict[str, Any] | None = None
    if resume == "auto":
        resume = ckpt_dir / "last.pt" if (ckpt_dir / "last.pt").exists() else None
    if resume is not None:
        checkpoint = torch.load(resume, map_location="cpu", weights_only=False)
        assert checkpoint is not None
        config = config.from_dict(checkpoint["config"])

    if dist_info.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, out_dir / "recipe.yaml")
        config.to_json(out_dir / "config.json")
        if checkpoint is None and metrics_path.exists():
            metrics_path.unlink()
        # The tokenizer is trained once per run and reused on resume.
        tokenizer_path = out_dir / "tokenizer.json"
        given = recipe.tokenizer.get("path")
        if given and not tokenizer_path.exists():
            # A fixed tokenizer (shared by ablation arms; HF WordPiece training breaks count ties
            # differently from run to run, so a shared file keeps arms and reruns comparable).
            source = Path(given) if Path(given).exists() else engine.resolve_paths(data_dir, [given])[0]
            shutil.copyfile(source, tokenizer_path)
        if not tokenizer_path.exists():
            corpus: list[str] = []
            for path in engine.resolve_paths(data_dir, list(recipe.tokenizer.get("corpus", []))):
                corpus += read_text_lines(path)
            if not corpus:
                raise ValueError("the recipe's tokenizer.corpus is empty: no text to train the tokenizer on")
            MoMoTokenizer.train(
                corpus,
                vocab_size=config.vocab_size,
                min_frequency=int(recipe.tokenizer.get("min_frequency", 2)),
            ).save(tokenizer_path)
    if dist_info.world > 1:
        torch.distributed.barrier()
    tokenizer = MoMoTokenizer.load(out_dir / "tokenizer.json")
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens, config allows {config.vocab_size}")
    tokens = engine.token_info(tokenizer)

    if checkpoint is not None:
        engine.restore_rng(checkpoint["rng"])
    else:
        torch.manual_seed(recipe.seed)
    start_stage = checkpoint["stage_index"] if checkpoint else 0
    start_step = checkpoint["step"] if checkpoint else 0
    global_step = checkpoint["global_step"] if checkpoint else 0
    kept: dict[str, Any] = checkpoint["kept"] if checkpoint else {}
    answers: list[str] | None = checkpoint.get("answers") if checkpoint else None
    previous_state: dict[str, torch.Tensor] | None = None
    if checkpoint is None and init_from is not None:
        previous_state = torch.load(init_from, map_location="cpu", weights_only=False)["module"]
    elapsed_before = checkpoint["elapsed"] if checkpoint else 0.0
    if checkpoint is not None and dist_info.is_main:
        run_log.truncate_metrics(metrics_path, global_step)

    if any(s.workers for stage in recipe.stages for s in stage.streams):
        # Workers are forked after the tokenizer ran here; its thread pool must not be inherited.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = RunResult(out_dir)
    module: engine.PretrainModule | None = None
    sources: dict[tuple[str, str, tuple[str, ...], int | None], StreamSource] = {}  # shared by stages
    for stage_index in range(start_stage, len(recipe.stages)):
        stage = recipe.stages[stage_index]
        datasets = {}
        for spec in stage.streams:
            # Stages often read the same files (e.g. the pairs of stages 3 and 4): decode them once.
            key = (spec.source, spec.kind, tuple(spec.paths), spec.limit)
            if key not in sources:
                sources[key] = engine.build_stream(spec, data_dir, config, tokenizer, answers)
            datasets[spec.name] = sources[key]
            if spec.kind == "vqa" and answers is None:
                answers = datasets[spec.name].label_names
        loaders: dict[str, StreamLoader] = {
            spec.name: engine.build_loader(
                spec, datasets[spec.name], config, recipe.seed * 1000 + stage_index * 31 + i, dist_info
            )
            for i, spec in enumerate(stage.streams)
        }
        torch.manual_seed(recipe.seed + stage_index)  # fresh heads start from a known state
        module = engine.build_module(config, stage, tokens, answers).to(dev)
        module.encoder.set_grad_checkpointing(recipe.activation_checkpointing)
        resuming_here = checkpoint is not None and stage_index == start_stage
        if resuming_here:
            assert checkpoint is not None
            module.load_state_dict(checkpoint["module"])
        elif previous_state is not None:
            missing, unexpected = engine.hand_over(module, previous_state)
            if dist_info.is_main and (missing or unexpected):
                new = sorted({k.split(".")[1] for k in missing})
                gone = sorted({k.split(".")[1] for k in unexpected})
                tqdm_write(
                    f"stage {stage.name}: starts from the previous weights; new heads {new}, dropped {gone}"
                )
        replicated = Replicated(module, dist_info, dev, recipe.parallelism)
        optimizer = engine.build_optimizer(module, stage)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, engine.warmup_cosine(stage))
        step = 0
        if resuming_here:
            assert checkpoint is not None
            replicated.load_optimizer_state_dict(
                optimizer, checkpoint.get("optimizer_format", "torch"), checkpoint["optimizer"]
            )
            scheduler.load_state_dict(checkpoint["scheduler"])
            for name, loader_state in checkpoint["loaders"].items():
                loaders[name].load_state_dict(loader_state)
            step = start_step

        samples_per_step = sum(s.batch_size for _, s in engine.active_streams(stage, 0))
        bar = tqdm(
            total=stage.steps,
            initial=step,
            desc=f"stage {stage_index + 1}/{len(recipe.stages)} {stage.name}",
            disable=not (progress and dist_info.is_main),
            dynamic_ncols=True,
        )
        tick = time.perf_counter()
        while step < stage.steps:
            logs = engine.train_step(
                replicated,
                optimizer,
                scheduler,
                stage,
                loaders,
                step,
                engine.StepState(global_step, recipe.seed),
                dev,
                recipe.precision,
                recipe.preset,
            )
            step += 1
            global_step += 1
            now = time.perf_counter()
            throughput = samples_per_step / max(now - tick, 1e-9)
            tick = now
            if dist_info.is_main and (step % stage.log_every == 0 or step == 1 or step == stage.steps):
                row = {
                    "stage": stage.name,
                    "step": step,
                    "global_step": global_step,
                    **logs,
                    "samples_per_s": round(throughput, 2),
                    "time": round(time.time(), 3),
                }
                run_log.append_metrics(metrics_path, row)
            shown = {k.split("/")[-1]: v for k, v in logs.items() if run_log.is_loss_key(k)}
            bar.set_postfix({**{k: f"{v:.3f}" for k, v in shown.items()}, "samples/s": f"{throughput:.0f}"})
            bar.update(1)
            tag = None
            if step == stage.steps:
                tag = f"stage{stage_index + 1}-{stage.name}-end"
            elif (stage.checkpoint_every and step % stage.checkpoint_every == 0) or (
                stop_after is not None and global_step >= stop_after
            ):
                tag = f"stage{stage_index + 1}-step{step}"
            if tag:
                # Collectives under FSDP: every rank gathers, rank 0 writes.
                full_state = replicated.full_state_dict()
                optimizer_format, optimizer_state = replicated.optimizer_state_dict(optimizer)
                if step == stage.steps:
                    engine.snapshot_heads(module, full_state, kept)
                    previous_state = full_state  # the next stage's start (and the artifact's)
            if tag and dist_info.is_main:
                payload = {
                    "module": full_state,
                    "optimizer": optimizer_state,
                    "optimizer_format": optimizer_format,
                    "scheduler": scheduler.state_dict(),
                    "loaders": {n: ld.state_dict() for n, ld in loaders.items()},
                    "stage_index": stage_index,
                    "stage": stage.name,
                    "step": step,
                    "global_step": global_step,
                    "kept": kept,
                    "answers": answers,
                    "rng": engine.capture_rng(),
                    "config": config.to_dict(),
                    "recipe": recipe.to_dict(),
                    "elapsed": elapsed_before + time.perf_counter() - started,
                }
                engine.save_checkpoint(ckpt_dir / f"{tag}.pt", payload)
                engine.save_checkpoint(ckpt_dir / "last.pt", payload)
            if stop_after is not None and global_step >= stop_after:
                bar.close()
                for loader in loaders.values():
                    loader.close()
                result.stopped_early = True
                if dist_info.world > 1:  # rank 0's checkpoint is on disk before any rank goes on
                    torch.distributed.barrier()
                return result
        bar.close()
        for loader in loaders.values():
            loader.close()
        result.steps[stage.name] = stage.steps
        if resuming_here and start_step == stage.steps:  # resumed at this stage's end: no step ran here
            previous_state = replicated.full_state_dict()

    result.wall_seconds = elapsed_before + time.perf_counter() - started
    rows = run_log.read_metrics(metrics_path) if dist_info.is_main else []
    result.first_losses, result.final_losses = run_log.summarise_losses(rows)
    if dist_info.is_main and rows:
        run_log.plot_losses(rows, out_dir / "loss_curves.png")
    assert module is not None, "the recipe has no stages"

    # The artifact: encoder + kept heads (ITM, VQA, the MLM token head) + the contrastive temperature.
    heads: dict[str, HeadSpec] = {}
    if "itm" in kept:
        heads["itm"] = ITM_SPEC
    if "vqa" in kept and kept["vqa"]["spec"]:
        heads["vqa"] = HeadSpec.from_dict(kept["vqa"]["spec"])
    assert previous_state is not None
    encoder = MoMoEncoder(config)  # unsharded, on CPU: the module itself may hold FSDP shards on a GPU
    encoder.load_state_dict(
        {k.removeprefix("encoder."): v for k, v in previous_state.items() if k.startswith("encoder.")}
    )
    model = MoMoModel(
        config,
        encoder=encoder,
        head_specs=heads,
        temperature=kept.get("temperature", 0.07),
        with_token_head="mlm" in kept,
    )
    for name in heads:
        model.heads[name].load_state_dict(kept[name]["state"])
    if model.token_head is not None:
        model.token_head.load_state_dict(kept["mlm"]["state"])
    model.eval()
    result.model = model
    if register_name and dist_info.is_main:
        data_used = sorted({p for s in recipe.stages for spec in s.streams for p in spec.paths})
        manifest = Manifest(
            name=register_name,
            recipe={
                "recipe": recipe.to_dict(),
                "steps": result.steps,
                "wall_seconds": round(result.wall_seconds, 1),
                "world_size": dist_info.world,
                "device": dev.type,
            },
            data={"data_dir": str(data_dir), "paths": data_used},
            metrics={
                "pretrain_first_losses": result.first_losses,
                "pretrain_final_losses": result.final_losses,
            },
        )
        store = ModelStore(store_root) if store_root else ModelStore()

        def write(directory: Path, version: str) -> None:
            manifest.version = version
            save_artifact(directory, model, tokenizer, manifest)

        info = store.register(register_name, write)
        result.reference = info.reference
    if dist_info.world > 1:
        torch.distributed.barrier()
    return result


def tqdm_write(message: str) -> None:
    tqdm.write(message)


def register(app: typer.Typer) -> None:
    @app.command("pretrain")
    def pretrain(
        config: Annotated[
            Path, typer.Option("--config", help="Recipe YAML (stages as data).")
        ] = DEFAULT_RECIPE,
        preset: Annotated[str | None, typer.Option("--preset", help="Override the recipe's preset.")] = None,
        stages: Annotated[
            str | None, typer.Option("--stages", help="Comma-separated stage names to run.")
        ] = None,
        out: Annotated[Path, typer.Option("--out", help="Run directory.")] = Path("runs/pretrain"),
        resume: Annotated[str | None, typer.Option("--resume", help="Checkpoint path, or 'auto'.")] = None,
        init_from: Annotated[
            Path | None, typer.Option("--init-from", help="Start from this checkpoint.")
        ] = None,
        budget: Annotated[float, typer.Option("--budget", help="Scale every stage's steps.")] = 1.0,
        from_shards: Annotated[
            bool,
            typer.Option(
                "--from-shards",
                help="Read every in-memory stream from its `momo data shard --bundled` shards.",
            ),
        ] = False,
        shard_workers: Annotated[
            int, typer.Option("--shard-workers", help="DataLoader workers per stream (--from-shards).")
        ] = 1,
        seed: Annotated[int | None, typer.Option("--seed")] = None,
        data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="MOMO_DATA_DIR")] = None,
        device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda")] = "auto",
        register_as: Annotated[
            str | None, typer.Option("--register", help="Register the result under this name.")
        ] = None,
        activate: Annotated[
            bool, typer.Option("--activate/--no-activate", help="Activate the registered version.")
        ] = False,
        store: Annotated[Path, typer.Option("--store", envvar="MOMO_MODEL_STORE")] = Path("model_store"),
    ) -> None:
        """Staged pretraining (simultaneous updates by default); runs under torchrun too."""
        from training.recipe import load_recipe

        recipe = load_recipe(config, preset=preset, seed=seed, data_dir=str(data_dir) if data_dir else None)
        recipe = recipe.select_stages(stages.split(",") if stages else None)
        if budget != 1.0:
            recipe = recipe.scaled(budget)
        if from_shards:
            recipe = recipe.from_shards(workers=shard_workers)
        result = run_pretraining(
            recipe,
            out,
            resume=resume,
            init_from=init_from,
            device=device,
            register_name=register_as,
            store_root=store,
        )
        typer.echo(f"run directory: {result.out_dir}  wall time: {result.wall_seconds / 60:.1f} min")
        for stage, losses in result.final_losses.items():
            first = result.first_losses.get(stage, {})
            text = ", ".join(
                f"{k} {first.get(k, float('nan')):.3f}->{v:.3f}" for k, v in sorted(losses.items())
            )
            typer.echo(f"  {stage}: {text}")
        if result.reference:
            typer.echo(f"registered {result.reference}")
            if activate:
                from momo.store import ModelStore

                ModelStore(store).activate(result.reference)
                typer.echo(f"active: {result.reference}")
