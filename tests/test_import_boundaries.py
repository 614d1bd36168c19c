"""The layering rules.

- `momo` imports neither `training` nor `service`; `service` never imports `training` (the API
  process must stay free of training code).
- The `momo` CLI is no exception: `momo.cli` names neither package, not even in a string handed to
  importlib; their commands reach it through the `momo.commands` entry points of pyproject.toml, and
  `momo serve` loads only the service's.
- Inside `momo` there is no import circle, counting imports inside functions (only `TYPE_CHECKING`
  blocks are left out): `momo.runtime` and `momo.export` meet only in `momo.graphs`, the graph
  format, and neither reaches the other.
- Serving an artifact that ships its ONNX graphs imports no torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MOMO = ROOT / "momo"

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


def declared_commands() -> list[EntryPoint]:
    """The `momo.commands` entry points as pyproject.toml declares them (not as some install has them)."""
    group = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["momo.commands"]
    return [EntryPoint(name, value, "momo.commands") for name, value in group.items()]


def test_command_entry_points_live_above_the_library() -> None:
    commands = declared_commands()
    assert {"serve", "worker", "collections", "pretrain", "data"} <= {c.name for c in commands}
    for command in commands:
        package = command.module.split(".")[0]
        assert package in {"training", "service"}, f"{command.name} = {command.value}"
        assert command.attr == "register", command.value


@pytest.mark.parametrize(("command", "forbidden"), [("serve", "training"), ("collections", "training")])
def test_a_command_imports_only_its_own_package(command: str, forbidden: str) -> None:
    declared = [(c.name, c.value, c.group) for c in declared_commands()]
    code = "\n".join(
        [
            "import sys",
            "from importlib.metadata import EntryPoint",
            "from momo import cli",
            f"cli._register_providers([{command!r}, '--help'], [EntryPoint(*e) for e in {declared!r}])",
            f"print(sorted(m for m in sys.modules if m.split('.')[0] == {forbidden!r}))",
        ]
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def _named_packages(tree: ast.AST) -> set[str]:
    """Top-level packages that `tree` imports anywhere (functions included), by statement or by a
    literal module name given to importlib.import_module / __import__."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if callee in {"import_module", "__import__"} and isinstance(node.args[0].value, str):
                found.add(node.args[0].value.split(".")[0])
    return found


def test_momo_never_names_training_or_service() -> None:
    """Also imports inside functions and by string, which importing every module cannot see."""
    offenders = {
        str(path.relative_to(ROOT)): bad
        for path in sorted(MOMO.rglob("*.py"))
        if (bad := _named_packages(ast.parse(path.read_text())) & {"training", "service"})
    }
    assert offenders == {}


def test_the_package_finder_sees_every_form_of_import() -> None:
    tree = ast.parse(
        "import importlib\n"
        "def f():\n    import training.cli\n    from service import app\n"
        "    importlib.import_module('training.pretrain')\n    __import__('service.cli')\n"
    )
    assert _named_packages(tree) >= {"training", "service", "importlib"}
    assert _named_packages(ast.parse("importlib.import_module('service.cli')")) == {"service"}


# --- inside momo: the import graph, read from the source -----------------------------------------------
def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """The `momo` modules `tree` imports anywhere (functions included), but under TYPE_CHECKING."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in modules:
                found.add(node.module)
            found.update(name for a in node.names if (name := f"{node.module}.{a.name}") in modules)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def momo_import_graph() -> dict[str, set[str]]:
    """module -> the momo modules it imports (`momo.x` names, the package itself left out)."""
    paths = {f"momo.{p.stem}": p for p in MOMO.glob("*.py") if p.stem != "__init__"}
    names = set(paths)
    return {name: _imports(ast.parse(path.read_text()), names) - {name} for name, path in paths.items()}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, ()))
    return seen


def test_momo_has_no_import_circle() -> None:
    graph = momo_import_graph()
    assert {"momo.runtime", "momo.export", "momo.graphs"} <= set(graph)
    circles = sorted(m for m in graph if m in _reachable(graph, m))
    assert not circles, f"modules that reach themselves through imports: {circles}"


def test_runtime_and_export_meet_only_in_the_graph_format() -> None:
    graph = momo_import_graph()
    runtime, export = _reachable(graph, "momo.runtime"), _reachable(graph, "momo.export")
    assert "momo.export" not in runtime, "momo.runtime must get an exporter passed in, not import export"
    assert "momo.runtime" not in export
    assert "momo.graphs" in graph["momo.runtime"] and "momo.graphs" in graph["momo.export"]
    writers = {"momo.graph_writer", "momo.onnx_export", "momo.torch_programs", "momo.parity", "momo.export"}
    assert not _reachable(graph, "momo.graphs") & (writers | {"momo.runtime"})


def test_the_graph_finder_sees_imports_inside_functions() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from momo import a\n"
        "def f():\n    from momo.b import x\n    import momo.c\n    from momo import d\n"
    )
    assert _imports(tree, {"momo.a", "momo.b", "momo.c", "momo.d"}) == {"momo.b", "momo.c", "momo.d"}


# --- torch-free serving ------------------------------------------------------------------------------------
TORCH_FREE = """
import sys
from pathlib import Path
from PIL import Image
from momo.preprocess import preprocess_images
from momo.runtime import load_runtime
from momo.store import ModelStore
runtime = load_runtime(None, "onnx", store=ModelStore(Path({store!r})), threads=1, exporter=None)
artifact = runtime.artifact
batch = artifact.tokenizer.encode_batch(["a red circle"], artifact.config.max_text_len)
text = runtime.encode_texts(batch.input_ids, batch.attention_mask)
pixels = preprocess_images([Image.new("RGB", (40, 40), (200, 30, 30))], artifact.config)
image = runtime.encode_images(pixels)
assert text.shape == image.shape == (1, artifact.config.embed_dim), (text.shape, image.shape)
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torch")
assert "torch" not in sys.modules, loaded[:10]
print("ok")
"""


def test_serving_the_bundled_model_with_onnx_imports_no_torch() -> None:
    code = TORCH_FREE.format(store=str(ROOT / "model_store"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
