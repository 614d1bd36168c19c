"""Training-side `momo` commands. Each module below owns its commands through `register(app)`;
modules keep heavy imports inside the command bodies so `momo --help` stays fast."""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES = (
    "training.data.commands",  # momo data prepare
    "training.pretrain",  # momo pretrain
    "training.export",  # momo export
    "training.evaluation.commands",  # momo eval
    "training.finetune.cli",  # momo finetune
    "training.ablation",  # momo ablate
)


def register(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # that part is not built yet
            raise
        module.register(app)
