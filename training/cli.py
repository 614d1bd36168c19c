"""Training-side `momo` commands (registered through the `momo.commands` entry points in
pyproject.toml). Each module below owns its commands through `register(app)` and keeps heavy imports
inside the command bodies, so `momo --help` stays fast; they are imported here, when `momo` asks
for a training command, and named explicitly so the import-boundary tests see them."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from training import ablation, export, pretrain
    from training.data import commands as data_commands
    from training.evaluation import commands as eval_commands
    from training.finetune import cli as finetune_cli

    data_commands.register(app)  # momo data prepare | shard
    pretrain.register(app)  # momo pretrain
    export.register(app)  # momo export
    eval_commands.register(app)  # momo eval
    finetune_cli.register(app)  # momo finetune
    ablation.register(app)  # momo ablate
