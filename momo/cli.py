"""The one `momo` command.

`momo models …` lives here. The other commands come from the packages above this library, declared in
pyproject.toml as entry points of the group `momo.commands`: name = the command, value = the
`register(app)` that adds it (`serve = "service.cli:register"`). `momo` never imports those packages
itself; it loads only the entry points that a command line names (all of them for `momo --help` or an
unknown command), so `momo serve` never imports `training`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
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

COMMAND_GROUP = "momo.commands"
_registered: set[str] = set()  # entry point values (`module:function`) already added to `app`


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


def _register_providers(argv: list[str], commands: Iterable[EntryPoint] | None = None) -> None:
    """Add to `app` the commands that `argv` needs, from `commands` (default: the installed entry
    points of `COMMAND_GROUP`). One `register` may add several commands; each runs once."""
    command = next((a for a in argv if not a.startswith("-")), None)
    present = {i.name for i in app.registered_commands} | {i.name for i in app.registered_groups}
    if command is not None and command in present:
        return  # `momo models …`, or a command registered before
    declared = list(entry_points(group=COMMAND_GROUP) if commands is None else commands)
    if not declared:
        typer.echo(
            f"momo: no {COMMAND_GROUP} entry points installed (only `momo models` is available);"
            " reinstall the project (pip install -e .) to get the other commands",
            err=True,
        )
    for entry in [e for e in declared if e.name == command] or sorted(declared, key=lambda e: e.value):
        if entry.value in _registered:
            continue
        try:
            register = entry.load()
        except ModuleNotFoundError as exc:
            if exc.name is None or not (entry.module + ".").startswith(exc.name + "."):
                raise
            continue  # that package is not installed (its commands are left out)
        register(app)
        _registered.add(entry.value)


def main() -> None:
    _register_providers(sys.argv[1:])
    app()


if __name__ == "__main__":
    main()
