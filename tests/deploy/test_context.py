"""The Docker build context (.dockerignore) and the pinned versions in docker/requirements/."""

from __future__ import annotations

import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.helpers import (
    DOCKERFILES,
    ROOT,
    build_context,
    is_excluded,
    parse_dockerfile,
    read_dockerignore,
)

REQUIREMENTS = ROOT / "docker" / "requirements"
# role -> (extras of pyproject.toml, other roots) — as in docker/lock.py
ROLES = {"api": (["serve"], ["onnx"]), "worker": (["train", "serve"], [])}
NEVER_IN_CONTEXT = [
    ".venv/bin/python",
    ".venv/lib/python3.11/site-packages/torch/__init__.py",
    "data/fashion_mnist/train/0/00001.png",
    "runs/default/checkpoints/last.pt",
    "var/service/collections.db",
    "tests/conftest.py",
    "tests/deploy/test_context.py",
    "benchmarks/runtime.py",
    ".git/HEAD",
    ".env",
    ".mypy_cache/3.11/x.json",
    "momo/__pycache__/cli.cpython-311.pyc",
    "service/routers/__pycache__/ops.cpython-311.pyc",
    "momo.egg-info/PKG-INFO",
    "model_store/active.json",
    "model_store/momo-tiny/v1/model.safetensors",  # only the bundled version is baked in
    "model_store/momo-tiny/v3/model.safetensors",
    "model_store/momo-tiny/.tmp-abc/model.safetensors",
    "model_store/other/v1/config.json",
    "docker-compose.yml",
    ".env.example",
]
ALWAYS_IN_CONTEXT = [
    "pyproject.toml",
    "README.md",
    "momo/cli.py",
    "service/app.py",
    "service/routers/ops.py",
    "service/ui/index.html",
    "service/ui/app.js",
    "training/__init__.py",
    "docker/install.sh",
    "docker/requirements/api.txt",
    "docker/healthcheck.py",
    "docker/gpu_check.sh",
    "model_store/momo-tiny/v2/model.safetensors",
    "model_store/momo-tiny/v2/manifest.json",
]


def test_dockerignore_keeps_out_what_an_image_must_not_hold() -> None:
    patterns = read_dockerignore(ROOT / ".dockerignore")
    leaked = [p for p in NEVER_IN_CONTEXT if not is_excluded(p, patterns)]
    assert leaked == [], f"in the build context: {leaked}"
    missing = [p for p in ALWAYS_IN_CONTEXT if is_excluded(p, patterns)]
    assert missing == [], f"left out of the build context: {missing}"


def test_build_context_holds_only_the_project() -> None:
    context = build_context()
    roots = {"pyproject.toml", "README.md", "momo", "training", "service", "docker", "model_store"}
    assert {p.split("/", 1)[0] for p in context} <= roots, sorted({p.split("/", 1)[0] for p in context})
    assert any(p.startswith("momo/") for p in context) and "pyproject.toml" in context
    assert not any(p.startswith(("tests/", "docker/Dockerfile")) for p in context)


def test_bundled_model_is_in_the_context() -> None:
    args = parse_dockerfile(DOCKERFILES["cpu"]).global_args
    assert parse_dockerfile(DOCKERFILES["gpu"]).global_args["MOMO_BUNDLED_NAME"] == args["MOMO_BUNDLED_NAME"]
    bundled = f"model_store/{args['MOMO_BUNDLED_NAME']}/{args['MOMO_BUNDLED_VERSION']}"
    if not (ROOT / bundled / "manifest.json").is_file():
        pytest.skip(f"{bundled} is not in this checkout yet (the image build COPYs it)")
    files = [p for p in build_context() if p.startswith(bundled + "/")]
    names = {p.rsplit("/", 1)[1] for p in files}
    assert {"config.json", "model.safetensors", "tokenizer.json", "heads.json", "manifest.json"} <= names


def _pyproject_roots(extras: list[str], others: list[str]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *(r for e in extras for r in project["optional-dependencies"][e])]
    return [Requirement(s) for s in [*specs, *others]]


def _pins(name: str) -> dict[str, str]:
    from tests.deploy.helpers import read_pins

    return read_pins(REQUIREMENTS / name)


@pytest.mark.parametrize("role", sorted(ROLES))
def test_lock_files_pin_every_project_requirement(role: str) -> None:
    """Every requirement of the role's extras is pinned exactly, to a version pyproject.toml allows
    (torch through torch-*.txt). Completeness of the closure is checked by the install replay, which
    installs the project with --no-index on top of these pins."""
    pins = _pins(f"{role}.txt")
    torch = {"cpu": _pins("torch-cpu.txt")["torch"], "gpu": _pins("torch-gpu.txt")["torch"]}
    for line in pins.values():
        assert "==" in line and not any(op in line for op in (">", "<", "~", "!")), f"{role}.txt: {line}"
    assert len(pins) == len(
        [
            ln
            for ln in (REQUIREMENTS / f"{role}.txt").read_text().splitlines()
            if ln and not ln.startswith("#")
        ]
    ), f"{role}.txt has a name twice"
    for req in _pyproject_roots(*ROLES[role]):
        name = canonicalize_name(req.name)
        candidates = list(torch.values()) if name == "torch" else [pins.get(name, "")]
        for line in candidates:
            regenerate = "regenerate with `.venv/bin/python docker/lock.py`"
            assert line, f"{role}.txt does not pin {req.name} ({req}); {regenerate}"
            version = line.split("==", 1)[1]
            assert req.specifier.contains(version, prereleases=True), f"{line} violates {req}; {regenerate}"


def test_build_tools_and_gpu_pins() -> None:
    build = _pins("build.txt")
    assert set(build) == {"pip", "setuptools"}
    assert build["setuptools"] == _pins("worker.txt")["setuptools"]
    gpu = _pins("gpu.txt")
    assert list(gpu) == ["onnxruntime-gpu"] and "==" in gpu["onnxruntime-gpu"]
    # Same minor series or newer than pyproject's floor for onnxruntime.
    floor = next(r for r in _pyproject_roots(["gpu"], []) if r.name == "onnxruntime-gpu")
    assert floor.specifier.contains(gpu["onnxruntime-gpu"].split("==")[1])
