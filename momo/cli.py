"""The one `momo` command.

`momo models …` lives here; training commands (`data`, `pretrain`, `finetune`, `eval`, `export`,
`ablate`) are registered by `training.cli`, service commands (`serve`, `worker`, `collections`) by
`service.cli`.
Only the package a command needs is imported, so `momo serve` never imports `training`.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from momo.artifact import ArtifactError, load_artifact
from momo.store import DEFAULT_STORE, ModelStore, StoreError

app = typer.Typer(
    name="momo",
    help="MoMo: one compact shared image+text encoder — train, evaluate, export, serve.",
    no_args_is_help=True,
    add_completion=False,
)
models_app = typer.Typer(help="List, inspect and activate model versions in the store.", no_args_is_help=True)
app.add_typer(models_app, name="models")

StoreOption = Annotated[
    Path, typer.Option("--store", envvar="MOMO_MODEL_STORE", help="Model store directory.")
]

# command name -> the package module whose `register(app)` adds it
COMMAND_PROVIDERS: dict[str, str] = {
    **{c: "training.cli" for c in ("data", "pretrain", "finetune", "eval", "export", "ablate")},
    **{c: "service.cli" for c in ("serve", "worker", "collections")},
}


@models_app.command("list")
def models_list(store: StoreOption = DEFAULT_STORE) -> None:
    """Every name:version in the store; the active one is starred."""
    infos = ModelStore(store).list()
    if not infos:
        typer.echo(f"no models in {store} yet (train one with `make pretrain-default`)")
        return
    for info in infos:
        mark = "*" if info.active else " "
        parent = f"  parent={info.parent}" if info.parent else ""
        typer.echo(f"{mark} {info.reference:<24} {info.created_at or '':<26}{parent}")


@models_app.command("show")
def models_show(
    reference: Annotated[str, typer.Argument(help="name, name:version, a path, or 'active'")] = "active",
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Config, heads and manifest of one version (hashes verified)."""
    try:
        artifact = load_artifact(ModelStore(store).locate(reference))
    except (StoreError, ArtifactError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    report = {
        "path": str(artifact.path),
        "config": artifact.config.to_dict(),
        "heads": artifact.heads.to_dict(),
        "manifest": artifact.manifest.to_dict(),
    }
    typer.echo(json.dumps(report, indent=2))


@models_app.command("activate")
def models_activate(
    reference: Annotated[str, typer.Argument(help="name:version to make active")],
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Point the store's active model at REFERENCE (atomic; verified first)."""
    try:
        info = ModelStore(store).activate(reference)
    except (StoreError, ArtifactError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"active: {info.reference}")


def _register_providers(argv: list[str]) -> None:
    command = next((a for a in argv if not a.startswith("-")), None)
    wanted = {COMMAND_PROVIDERS[command]} if command in COMMAND_PROVIDERS else set(COMMAND_PROVIDERS.values())
    for module_name in sorted(wanted):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(app)


def main() -> None:
    _register_providers(sys.argv[1:])
    app()


if __name__ == "__main__":
    main()
