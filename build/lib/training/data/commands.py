"""`momo data …` commands (registered by `training.cli`). Heavy imports stay inside the command body so
`momo --help` stays fast."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Prepare the bundled data sets (DESIGN.md §4).", no_args_is_help=True)

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

    app.add_typer(data_app, name="data")
