from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from momo import cli
from momo.cli import COMMAND_GROUP, app
from momo.store import ModelStore
from tests.factories import register_random
from tests.test_import_boundaries import declared_commands

runner = CliRunner()


def test_models_list_show_activate(store_root: Path, test_config, test_tokenizer) -> None:
    empty = runner.invoke(app, ["models", "list", "--store", str(store_root)])
    assert empty.exit_code == 0 and "no models" in empty.output
    store = ModelStore(store_root)
    register_random(store, test_config, test_tokenizer, seed=1)
    register_random(store, test_config, test_tokenizer, seed=2, activate=False)
    listed = runner.invoke(app, ["models", "list", "--store", str(store_root)])
    assert listed.exit_code == 0
    lines = listed.output.strip().splitlines()
    assert lines[0].startswith("* momo-test:v1") and lines[1].startswith("  momo-test:v2")
    shown = runner.invoke(app, ["models", "show", "momo-test:v2", "--store", str(store_root)])
    assert shown.exit_code == 0
    report = json.loads(shown.output)
    assert report["config"]["name"] == "momo-test" and report["manifest"]["version"] == "v2"
    activated = runner.invoke(app, ["models", "activate", "momo-test:v2", "--store", str(store_root)])
    assert activated.exit_code == 0 and "active: momo-test:v2" in activated.output
    assert store.active() == ("momo-test", "v2")
    missing = runner.invoke(app, ["models", "activate", "momo-test:v7", "--store", str(store_root)])
    assert missing.exit_code == 1 and "no version" in missing.output


def test_help_everywhere() -> None:
    for args in (["--help"], ["models", "--help"], ["models", "list", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, args
    # The installed entry point lists the training and service commands too.
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv=['momo','--help']; from momo.cli import main; main()"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for command in ("models", "pretrain", "data", "serve"):
        assert command in proc.stdout


def test_installed_commands_are_the_declared_ones() -> None:
    """The install's `momo.commands` entry points are pyproject.toml's: an install made before a change
    there lacks commands (`momo serve` would be 'No such command')."""
    installed = {(e.name, e.value) for e in entry_points(group=COMMAND_GROUP)}
    declared = {(e.name, e.value) for e in declared_commands()}
    assert installed == declared, "the install is stale: run `pip install -e . --no-deps` (or `make venv`)"


def test_each_register_adds_exactly_the_commands_declared_for_it() -> None:
    """`momo serve` loads only the entry points named `serve`: a command that a register adds without
    an entry point of its name would be missing whenever another command is run."""
    by_register: dict[str, set[str]] = {}
    for entry in declared_commands():
        by_register.setdefault(entry.value, set()).add(entry.name)
    for value, names in by_register.items():
        target = typer.Typer()
        EntryPoint("x", value, COMMAND_GROUP).load()(target)
        added = {i.name for i in target.registered_commands} | {i.name for i in target.registered_groups}
        assert added == names, value


def test_only_the_named_command_is_registered(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded: list[str] = []
    commands = [EntryPoint(e.name, e.value, COMMAND_GROUP) for e in declared_commands()]
    monkeypatch.setattr(EntryPoint, "load", lambda self: lambda app: loaded.append(self.value))
    monkeypatch.setattr(cli, "_registered", set())
    monkeypatch.setattr(cli, "app", typer.Typer())  # none of the commands other tests registered
    cli.app.add_typer(cli.models_app, name="models")
    cli._register_providers(["--log-level", "serve", "--port", "1"], commands)
    assert loaded == ["service.cli:register"]
    cli._register_providers(["--help"], commands)  # everything, each register once
    assert loaded == ["service.cli:register", "training.cli:register"]
    cli._register_providers(["models", "list"], [])  # built-in: nothing to load, no warning
    assert loaded == ["service.cli:register", "training.cli:register"]
    assert capsys.readouterr().err == ""
    cli._register_providers(["pretrain"], [])  # a stale install says what to do
    assert "reinstall the project" in capsys.readouterr().err
