from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from momo.cli import app
from momo.store import ModelStore
from tests.factories import register_random

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
