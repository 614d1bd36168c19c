"""The layering rule: `momo` imports neither `training` nor `service`; `service` never imports
`training` (the API process must stay free of training code)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import importlib, pkgutil, sys
import {package}
for info in pkgutil.walk_packages({package}.__path__, "{package}."):
    if info.name.startswith("service.worker") or info.name.startswith("service.celery_tasks"):
        continue  # the Celery worker side is allowed to run training code
    importlib.import_module(info.name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in {forbidden})
print(bad)
sys.exit(1 if bad else 0)
"""


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("momo", {"training", "service"}), ("service", {"training"})],
)
def test_package_does_not_import(package: str, forbidden: set[str]) -> None:
    code = CHECK.format(package=package, forbidden=forbidden)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{package} imported {result.stdout.strip()} {result.stderr[-2000:]}"


def test_serve_command_does_not_import_training() -> None:
    code = (
        "import sys; from momo import cli; cli._register_providers(['serve']);"
        "print(sorted(m for m in sys.modules if m.startswith('training')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
