"""The Docker build context (.dockerignore) and the pinned versions in docker/requirements/.

The locks are made by `make locks` (docker/lock.sh, on PyPI); the checks here need no network: each
lock pins, with hashes, every requirement that pyproject.toml declares for its role at a version the
requirement allows, so a dependency added or raised there without `make locks` fails here."""

from __future__ import annotations

import importlib.metadata as md
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
    read_lock,
    read_pins,
)

REQUIREMENTS = ROOT / "docker" / "requirements"
# lock file -> the extras of pyproject.toml its role installs (docker/install.sh, docker/lock.sh)
LOCKS = {
    "api.txt": ["serve"],
    "worker.txt": ["train", "serve"],
    "api-gpu.txt": ["serve"],
    "worker-gpu.txt": ["train", "serve"],
}
REGENERATE = "regenerate with `make locks`"
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


def _pyproject_roots(extras: list[str]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *(r for e in extras for r in project["optional-dependencies"][e])]
    return [Requirement(s) for s in specs]


def _torch_requirements() -> list[Requirement]:
    lines = (REQUIREMENTS / "torch-deps.in").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def _version(line: str) -> str:
    return line.split("==", 1)[1]


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_locks_pin_every_project_requirement_with_hashes(lock: str) -> None:
    """Every requirement of the role's extras and of torch is pinned exactly, with its files' hashes,
    to a version that the requirement allows; torch itself comes from torch-*.txt. Completeness of the
    closure is checked by the install replay (the project installs with --no-index on these pins)."""
    pins = read_lock(REQUIREMENTS / lock)
    for name, pin in pins.items():
        assert "==" in pin.line and not any(op in pin.line for op in (">", "<", "~", "!", ";")), pin.line
        assert pin.hashes and all(h.startswith("sha256:") for h in pin.hashes), f"{lock}: {name} unhashed"
    assert not {n for n in pins if n == "torch" or n.startswith(("nvidia-", "triton"))}, f"{lock}: torch"
    torch_pins = [read_pins(REQUIREMENTS / f"torch-{v}.txt")["torch"] for v in ("cpu", "gpu")]
    for req in [*_pyproject_roots(LOCKS[lock]), *_torch_requirements()]:
        name = canonicalize_name(req.name)
        for line in torch_pins if name == "torch" else [pins[name].line if name in pins else ""]:
            assert line, f"{lock} does not pin {req.name} ({req}); {REGENERATE}"
            assert req.specifier.contains(_version(line), prereleases=True), f"{line} violates {req}"


def test_torch_requirements_are_the_pinned_builds() -> None:
    """torch-deps.in is the requirement list of the CPU build (the one in the project's venv, when it is
    the pinned build): a torch upgrade that changes it must update the file."""
    pinned = _version(read_pins(REQUIREMENTS / "torch-cpu.txt")["torch"])
    installed = md.version("torch")
    if installed != pinned:
        pytest.skip(f"the venv has torch {installed}, not the pinned {pinned}")
    own = {str(r) for r in map(Requirement, md.requires("torch") or []) if r.marker is None}
    assert own == {str(r) for r in _torch_requirements()}


def test_build_tools_and_gpu_pins() -> None:
    build = read_lock(REQUIREMENTS / "build.txt")
    assert set(build) == {"pip", "setuptools"} and all(p.hashes for p in build.values())
    for lock in LOCKS:  # the backend that builds the project is the one the image keeps
        assert build["setuptools"].line == read_pins(REQUIREMENTS / lock)["setuptools"], lock
    gpu = read_pins(REQUIREMENTS / "gpu.txt")
    assert list(gpu) == ["onnxruntime-gpu"] and "==" in gpu["onnxruntime-gpu"]
    # Same minor series or newer than pyproject's floor for onnxruntime.
    floor = next(r for r in _pyproject_roots(["gpu"]) if r.name == "onnxruntime-gpu")
    assert floor.specifier.contains(_version(gpu["onnxruntime-gpu"]))
