"""`momo eval NAME[:VERSION]` (registered by `training.cli`). Heavy imports stay in the command body."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_command(
        reference: Annotated[
            str, typer.Argument(help="NAME, NAME:VERSION, 'active' or an artifact path.")
        ] = "active",
        store: Annotated[
            Path, typer.Option("--store", envvar="MOMO_MODEL_STORE", help="Model store directory.")
        ] = Path("model_store"),
        data_dir: Annotated[
            Path,
            typer.Option("--data-dir", envvar="MOMO_DATA_DIR", help="Prepared data (`momo data prepare`)."),
        ] = Path(os.environ.get("MOMO_DATA_DIR", "data")),
        out: Annotated[
            Path | None, typer.Option("--out", help="Output directory (default eval_results/NAME-VERSION).")
        ] = None,
        runtime: Annotated[str, typer.Option("--runtime", help="onnx | onnx-int8 | torch")] = "onnx",
        device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
        threads: Annotated[int, typer.Option("--threads", help="Intra-op threads.")] = min(
            2, os.cpu_count() or 1
        ),
        groups: Annotated[
            str, typer.Option("--groups", help="Comma-separated: vision,language,multimodal.")
        ] = "vision,language,multimodal",
        max_train: Annotated[int, typer.Option("--max-train", help="Probe training items per task.")] = 5000,
        max_test: Annotated[
            int, typer.Option("--max-test", help="Probe / zero-shot test items per task.")
        ] = 2000,
        max_retrieval: Annotated[int, typer.Option("--max-retrieval", help="Retrieval test pairs.")] = 1000,
        max_vqa: Annotated[int, typer.Option("--max-vqa", help="VQA test questions.")] = 5000,
        split: Annotated[
            str, typer.Option("--split", help="Score on test (reported) or val (development, ablations).")
        ] = "test",
        finetune_steps: Annotated[
            int, typer.Option("--finetune-steps", help="Language fine-tune protocol: optimizer steps.")
        ] = 600,
        max_finetune_train: Annotated[
            int, typer.Option("--max-finetune-train", help="Language fine-tune protocol: train items.")
        ] = 8000,
        max_val: Annotated[int, typer.Option("--max-val", help="Validation items (fine-tune selection).")] = (
            1000
        ),
        max_mlm: Annotated[int, typer.Option("--max-mlm", help="Held-out corpus lines for the MLM loss.")] = (
            2000
        ),
        max_itm: Annotated[int, typer.Option("--max-itm", help="Held-out images per ITM source.")] = 600,
        batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
        seed: Annotated[
            int, typer.Option("--seed", help="Seed of the subsets and of the random weights.")
        ] = 0,
        random_baseline: Annotated[
            bool, typer.Option("--random-baseline/--no-random-baseline", help="Also run random weights.")
        ] = True,
        manifest: Annotated[
            bool,
            typer.Option("--manifest/--no-manifest", help="Write the figures into the artifact manifest."),
        ] = True,
        progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
        cache_dir: Annotated[
            Path | None, typer.Option("--cache-dir", envvar="MOMO_CACHE_DIR", help="Exported-graph cache.")
        ] = None,
    ) -> None:
        """Evaluate a model on the held-out splits (vision, language, multimodal) beside baselines."""
        from momo.artifact import ArtifactError, load_artifact, update_manifest
        from momo.store import ModelStore, StoreError
        from training.evaluation.common import GROUPS, EvalSettings
        from training.evaluation.report import manifest_metrics, markdown, write_report
        from training.evaluation.suite import evaluate

        chosen = tuple(g.strip() for g in groups.split(",") if g.strip())
        unknown = [g for g in chosen if g not in GROUPS]
        if unknown:
            typer.echo(f"error: unknown groups {unknown}; choose from {', '.join(GROUPS)}", err=True)
            raise typer.Exit(2)
        try:
            import torch

            torch.set_num_threads(threads)
            path = ModelStore(store).locate(None if reference == "active" else reference)
            artifact = load_artifact(path)
        except (StoreError, ArtifactError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        if split not in ("test", "val"):
            typer.echo(f"error: --split must be test or val, not {split!r}", err=True)
            raise typer.Exit(2)
        settings = EvalSettings(
            data_dir=data_dir,
            split=split,
            max_train=max_train,
            max_test=max_test,
            max_retrieval=max_retrieval,
            max_vqa=max_vqa,
            finetune_steps=finetune_steps,
            finetune_eval_every=max(1, finetune_steps // 4),
            max_finetune_train=max_finetune_train,
            max_val=max_val,
            max_mlm=max_mlm,
            max_itm=max_itm,
            batch_size=batch_size,
            seed=seed,
            groups=chosen,
            random_baseline=random_baseline,
            progress=progress,
        )
        result = evaluate(
            artifact,
            settings,
            kind=runtime,
            threads=threads,
            cache_dir=cache_dir,
            device=device,
            log=lambda m: typer.echo(m, err=True),
        )
        out_dir = out or Path("eval_results") / f"{artifact.manifest.name}-{artifact.manifest.version}"
        written = write_report(result, out_dir)
        typer.echo(markdown(result))
        typer.echo("wrote " + ", ".join(str(p) for p in written))
        if manifest and result.rows:
            try:
                update_manifest(path, metrics={"eval": manifest_metrics(result)})
                typer.echo(f"metrics recorded in {path / 'manifest.json'}")
            except (ArtifactError, OSError) as exc:
                typer.echo(f"warning: manifest not updated ({exc})", err=True)
