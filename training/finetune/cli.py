"""`momo finetune`: the command line over `run_finetune` (registered by `training.cli`)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer

from training.finetune.options import TASKS, FinetuneError, FinetuneOptions
from training.finetune.run import run_finetune

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add `momo finetune` to `app`."""

    @app.command("finetune")
    def finetune(
        task: Annotated[str, typer.Option("--task", help=" | ".join(TASKS))],
        model: Annotated[str, typer.Option("--model", help="Base version: NAME, NAME:VERSION or 'active'.")],
        data: Annotated[
            Path,
            typer.Option(
                "--data",
                help="Image folder (image_classification) or JSONL (text_classification: {text,label}; "
                "retrieval: {image,text}; vqa: {image,question,answer}).",
            ),
        ],
        epochs: Annotated[int, typer.Option("--epochs", min=1)] = 3,
        max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Cap on steps.")] = None,
        lr: Annotated[float, typer.Option("--lr", help="Encoder learning rate.")] = 3e-4,
        head_lr_multiplier: Annotated[float, typer.Option("--head-lr-multiplier")] = 10.0,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
        freeze_encoder: Annotated[
            bool, typer.Option("--freeze-encoder/--full", help="Train only the head (or projections).")
        ] = False,
        val_split: Annotated[float, typer.Option("--val-split", help="Held-out fraction (seeded).")] = 0.2,
        patience: Annotated[
            int, typer.Option("--patience", help="Early stopping: validations without improvement (0: off).")
        ] = 3,
        eval_every: Annotated[
            int | None, typer.Option("--eval-every", help="Steps (default: per epoch).")
        ] = None,
        head: Annotated[str | None, typer.Option("--head", help="Head name (default per task).")] = None,
        name: Annotated[str | None, typer.Option("--name", help="Register under this model name.")] = None,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        limit: Annotated[int | None, typer.Option("--limit", help="Use at most this many records.")] = None,
        export_onnx: Annotated[bool, typer.Option("--export/--no-export", help="Export ONNX graphs.")] = True,
        device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
        store: Annotated[Path, typer.Option("--store", envvar="MOMO_MODEL_STORE")] = Path("model_store"),
        activate: Annotated[bool, typer.Option("--activate/--no-activate")] = False,
    ) -> None:
        """Fine-tune a model version on a dataset and register the result as a new version."""
        from tqdm import tqdm

        from momo.artifact import ArtifactError
        from momo.store import ModelStore, StoreError

        options = FinetuneOptions(
            task=task,
            epochs=epochs,
            max_steps=max_steps,
            learning_rate=lr,
            head_lr_multiplier=head_lr_multiplier,
            batch_size=batch_size,
            freeze_encoder=freeze_encoder,
            validation_split=val_split,
            early_stopping_patience=patience,
            eval_every=eval_every,
            head=head,
            seed=seed,
            limit=limit,
            output_name=name,
            export_onnx=export_onnx,
            device=device,
        )
        bar: Any = None

        def on_progress(step: int, total: int, metrics: dict[str, float]) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, desc=f"finetune {task}", dynamic_ncols=True)
            bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items() if k in ("loss", "val_metric")})
            bar.update(1)

        def on_event(message: str, _data: dict[str, Any]) -> None:
            (tqdm.write if bar is not None else typer.echo)(message)

        try:
            result = run_finetune(
                model, data, options, store_root=store, progress=on_progress, on_event=on_event
            )
        except (FinetuneError, StoreError, ArtifactError, ValueError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        finally:
            if bar is not None:
                bar.close()

        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        typer.echo(
            f"{result.task}: validation {result.metric} {fmt(result.before)} ({result.before_method}) -> "
            f"{fmt(result.after)} in {result.steps} steps ({result.wall_seconds:.1f}s)"
        )
        if result.reference:
            typer.echo(f"registered {result.reference} (parent {result.base})")
            if activate:
                with contextlib.suppress(StoreError):
                    ModelStore(store).activate(result.reference)
                    typer.echo(f"active: {result.reference}")
