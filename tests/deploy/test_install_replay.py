"""Replay the CPU images' install steps in fresh venvs, then run what the images run.

The Dockerfiles' builder stages do exactly `bash docker/install.sh deps ROLE cpu` and
`bash docker/install.sh project ROLE cpu` in a copy of the build context (test_dockerfiles.py checks
that no other install step exists); this test runs the same script, with the same lock files, on a
copy of the build context made with the same .dockerignore, into a new venv. Then, from that venv:
- the RUN steps of the api and worker stages (activate the bundled model — here a tiny random
  artifact with no exported graphs — and, for the api, export its ONNX graphs into $MOMO_CACHE_DIR);
- api: the image's command `momo serve` (on loopback): /health, /ready, an authenticated request,
  a refused unauthenticated one, the image's HEALTHCHECK script, a clean stop on SIGTERM; the venv
  holds no dev/test tooling and no training-only packages;
- worker: the image's command `momo worker` on the local Redis (when one is up), and its
  HEALTHCHECK script: unhealthy before the worker answers, healthy after.
Differences from a real build, on purpose: pip may use its cache, and torch's CPU build comes from
the indexes pip is configured with instead of the PyTorch index (MOMO_TEST_TORCH_INDEX_URL sets one).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from momo.store import ModelStore
from tests.deploy.helpers import DOCKERFILES, ROOT, build_context, exec_form, parse_dockerfile
from tests.factories import register_random

pytestmark = pytest.mark.slow

API_KEY = "replay-test-key"
DEV_TOOLS = ("pytest", "ruff", "mypy", "hadolint")


def _context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build context as Docker would send it (minus the bundled model: installs don't read it)."""
    context = tmp_path_factory.mktemp("docker-context")
    for relative in build_context():
        if relative.startswith("model_store/"):
            continue
        target = context / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target)
    return context


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MOMO_")}
    env.pop("VIRTUAL_ENV", None)
    env.update(extra)
    return env


def _install(context: Path, venv: Path, role: str) -> dict[str, float]:
    env = _clean_env(
        VENV=str(venv),
        PYTHON=getattr(sys, "_base_executable", sys.executable),
        TORCH_INDEX_URL=os.environ.get("MOMO_TEST_TORCH_INDEX_URL", ""),
    )
    seconds = {}
    for step in ("deps", "project"):
        start = time.monotonic()
        result = subprocess.run(
            ["bash", "docker/install.sh", step, role, "cpu"],
            cwd=context,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        seconds[step] = round(time.monotonic() - start, 1)
        assert result.returncode == 0, (
            f"install.sh {step} {role} cpu failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return seconds


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _context(tmp_path_factory)


@pytest.fixture(scope="module")
def api_venv(context: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv-api") / "venv"
    print(f"api install: {_install(context, venv, 'api')} s")
    return venv


@pytest.fixture(scope="module")
def worker_venv(context: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv-worker") / "venv"
    print(f"worker install: {_install(context, venv, 'worker')} s")
    return venv


def _image_steps(role: str, venv: Path, root: Path, **extra: str) -> dict[str, str]:
    """Run the RUN steps of the CPU Dockerfile's `role` stage (after its venv is copied in) from
    `venv`, with the image's folders under `root` and the bundled model replaced by the test
    artifact momo-test:v1 (registered in `root`/model_store, not yet active). Returns the
    environment, the image's ENV equivalent."""
    env = _clean_env(
        PATH=f"{venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        HOME=str(root),
        MOMO_MODEL_STORE=str(root / "model_store"),
        MOMO_DATA_DIR=str(root / "data"),
        MOMO_CACHE_DIR=str(root / "cache"),
        MOMO_DATA_ROOT=str(root / "datasets"),
        **extra,
    )
    steps = [i.args for i in parse_dockerfile(DOCKERFILES["cpu"]).stages[role].all("RUN")]
    assert steps, f"no RUN steps in the {role} stage"
    bundled = {"MOMO_BUNDLED_NAME": "momo-test", "MOMO_BUNDLED_VERSION": "v1"}
    for step in steps:
        result = subprocess.run(
            ["/bin/sh", "-c", step], cwd=root, env={**env, **bundled}, capture_output=True, text=True
        )
        assert result.returncode == 0, f"RUN {step}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert ModelStore(root / "model_store").active() == ("momo-test", "v1")
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, headers: dict[str, str] | None = None, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, headers={**(headers or {}), "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (what `docker stop` sends), then a kill if it has not exited within a minute."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_for(url: str, proc: subprocess.Popen[bytes], log: Path, deadline_s: float) -> int:
    deadline = time.monotonic() + deadline_s
    status = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"momo serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            status, _ = _get(url)
            if status == 200:
                return status
        except (OSError, json.JSONDecodeError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} not 200 after {deadline_s}s (last {status}):\n{log.read_text()[-4000:]}")


@pytest.fixture()
def served(api_venv: Path, tmp_path: Path, test_config: Any, test_tokenizer: Any) -> Iterator[dict[str, Any]]:
    """The api image's own steps after its install (activate the bundled model, export its ONNX
    graphs into $MOMO_CACHE_DIR), then its command — all from the replayed venv."""
    port = _free_port()
    artifact = register_random(
        ModelStore(tmp_path / "model_store"), test_config, test_tokenizer, name="momo-test", activate=False
    )
    env = _image_steps(
        "api", api_venv, tmp_path, MOMO_PORT=str(port), MOMO_API_KEYS=API_KEY, MOMO_THREADS="1"
    )
    assert artifact.reference == "momo-test:v1"
    # The artifact ships no graphs: the build step exported them with the image's packages.
    assert list((tmp_path / "cache").glob("*/text_encoder.onnx")), "no ONNX graphs exported"
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(api_venv / "bin" / "momo"), "serve", "--host", "127.0.0.1"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield {"proc": proc, "url": f"http://127.0.0.1:{port}", "env": env, "log": log, "tmp": tmp_path}
    finally:
        _stop(proc)


def test_api_install_serves_health_ready_and_requests(
    api_venv: Path, served: dict[str, Any], test_config: Any
) -> None:
    url, proc, log = served["url"], served["proc"], served["log"]
    _wait_for(f"{url}/health", proc, log, 120)
    _wait_for(f"{url}/ready", proc, log, 180)
    # The image's HEALTHCHECK, with the image's interpreter.
    check = subprocess.run(
        [str(api_venv / "bin" / "python"), str(ROOT / "docker" / "healthcheck.py"), "api"],
        env=served["env"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr
    status, body = _get(
        f"{url}/v1/embeddings", {"Authorization": f"Bearer {API_KEY}"}, {"input": ["a red circle"]}
    )
    assert status == 200, body
    assert len(body["data"][0]["embedding"]) == test_config.embed_dim
    status, body = _get(f"{url}/v1/embeddings", {}, {"input": ["a red circle"]})
    assert status == 401, body
    # the playground's static files are package data of the installed project (no source checkout)
    for asset in ("", "app.js", "style.css"):
        with urllib.request.urlopen(f"{url}/ui/{asset}", timeout=30) as response:
            assert response.status == 200 and response.read(), asset
    # A clean stop on SIGTERM (what `docker stop` sends): uvicorn drains, the lifespan closes, then
    # it exits 0 or re-raises the signal (-15, i.e. 143 in a container).
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM), log.read_text()[-2000:]
    assert '"msg": "stopped"' in log.read_text()


def test_api_install_is_lean_and_self_contained(api_venv: Path) -> None:
    """The code runs from the venv (not from a source checkout), and no dev/test tooling came along."""
    probe = subprocess.run(
        [
            str(api_venv / "bin" / "python"),
            "-c",
            "import momo, service; print(momo.__file__, service.__file__)",
        ],
        cwd="/",
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert all(p.startswith(str(api_venv)) for p in probe.stdout.split()), probe.stdout
    for tool in DEV_TOOLS:
        assert not (api_venv / "bin" / tool).exists(), f"{tool} is in the API image"
    site = next((api_venv / "lib").glob("python3*/site-packages"))
    unexpected = {"sklearn", "matplotlib", "scipy", "webdataset", "pytest", "tests"}
    assert not unexpected & {p.name for p in site.iterdir()}, "training/test packages in the API image"


def test_worker_image_steps(worker_venv: Path, tmp_path: Path, test_config: Any, test_tokenizer: Any) -> None:
    register_random(
        ModelStore(tmp_path / "model_store"), test_config, test_tokenizer, name="momo-test", activate=False
    )
    _image_steps("worker", worker_venv, tmp_path)


def test_worker_runs_and_passes_its_healthcheck(worker_venv: Path, tmp_path: Path) -> None:
    """The worker image's command (`momo worker`) from the replayed venv, on the local Redis, and its
    HEALTHCHECK script: unhealthy before the worker is up, healthy once it answers the ping."""
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        pytest.skip("no Redis on 127.0.0.1:6379 for the health check (make test starts an installed one)")
    broker = "redis://127.0.0.1:6379/15"  # a database of its own (Celery's broadcasts are per db)
    env = _clean_env(
        HOME=str(tmp_path),
        MOMO_BROKER_URL=broker,
        MOMO_DATA_DIR=str(tmp_path / "data"),
        MOMO_MODEL_STORE=str(tmp_path / "model_store"),
        MOMO_JOB_QUEUE=f"replay-{os.getpid()}",  # never take another test's jobs
        MOMO_HEALTHCHECK_TIMEOUT_S="3",
    )
    image_cmd = parse_dockerfile(DOCKERFILES["cpu"]).effective("worker", "CMD")
    assert image_cmd is not None
    program, *arguments = exec_form(image_cmd.args)
    command = [str(worker_venv / "bin" / program), *arguments]  # the worker image's CMD, from its venv
    check = [str(worker_venv / "bin" / "python"), str(ROOT / "docker" / "healthcheck.py"), "worker"]
    down = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 1, "healthy without a worker"
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert worker.poll() is None, f"{command} exited:\n{log.read_text()[-3000:]}"
            up = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
            if up.returncode == 0 or time.monotonic() > deadline:
                break
        assert up.returncode == 0, f"{up.stderr}\n{log.read_text()[-3000:]}"
    finally:
        _stop(worker)
