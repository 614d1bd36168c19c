"""`momo data …` commands (registered by `training.cli`). Heavy imports stay inside the command body so
`momo --help` stays fast."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(
        help="Prepare the bundled data sets and write shards (DESIGN.md §4).", no_args_is_help=True
    )

    @data_app.command("prepare")
    def prepare(
        data_dir: Annotated[
            Path, typer.Option("--data-dir", envvar="MOMO_DATA_DIR", help="Where to write the data.")
        ] = Path(os.environ.get("MOMO_DATA_DIR", "data")),
        scale: Annotated[
            str,
            typer.Option("--scale", help="'default' (full sources) or 'micro' (≤200 per split, for tests)."),
        ] = "default",
        install: Annotated[
            bool, typer.Option("--install/--no-install", help="apt-get install missing Debian data packages.")
        ] = True,
    ) -> None:
        """Write every bundled source with fixed train/val/test splits (skips sources already written)."""
        from training.data.prepare import PrepareError, prepare_command

        try:
            prepare_command(data_dir, scale, install)
        except (PrepareError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc

    @data_app.command("shard")
    def shard(
        source: Annotated[
            Path | None,
            typer.Argument(help="An image folder, a JSONL file (pairs, VQA, labelled text) or a text file."),
        ] = None,
        out: Annotated[Path | None, typer.Option("--out", help="Folder for the shards of SOURCE.")] = None,
        bundled: Annotated[
            bool, typer.Option("--bundled", help="Shard every bundled source into <data-dir>/shards/.")
        ] = False,
        data_dir: Annotated[
            Path, typer.Option("--data-dir", envvar="MOMO_DATA_DIR", help="The data folder (--bundled).")
        ] = Path(os.environ.get("MOMO_DATA_DIR", "data")),
        fmt: Annotated[
            str | None,
            typer.Option(
                "--format", help="image_folder, pairs, vqa, labeled_text or text (default: detected)."
            ),
        ] = None,
        shard_size: Annotated[int, typer.Option("--shard-size", help="Samples per shard.")] = 1000,
        shard_bytes: Annotated[
            int | None, typer.Option("--shard-bytes", help="Start a new shard after about this many bytes.")
        ] = None,
    ) -> None:
        """Write SOURCE (or, with --bundled, every bundled source) as WebDataset shards + index.json."""
        from training.data.formats import DataFormatError
        from training.data.sharding import shard_bundled, shard_source

        if bundled == (source is not None) or (source is not None and out is None):
            typer.echo("error: give SOURCE with --out, or --bundled", err=True)
            raise typer.Exit(2)
        try:
            if source is not None and out is not None:
                written = {
                    out: shard_source(source, out, fmt=fmt, shard_size=shard_size, shard_bytes=shard_bytes)
                }
            else:
                written = shard_bundled(data_dir, shard_size=shard_size, shard_bytes=shard_bytes)
        except (DataFormatError, OSError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        for folder, shards in written.items():
            typer.echo(f"{folder}: {shards.total} samples in {len(shards.shards)} shards ({shards.format})")

    app.add_typer(data_app, name="data")
