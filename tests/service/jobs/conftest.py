"""Job-system fixtures: micro Fashion-MNIST (the real `prepare_all`), a store with a random `momo-test`
base, Redis with a private DB number and queue per run, PostgreSQL with a private schema per test,
real `momo worker` subprocesses."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from momo.store import ModelStore
from tests.factories import register_random
from tests.service.helpers import LiveServer, make_settings, settings_env

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
POSTGRES = os.environ.get("MOMO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def redis_up(port: int = REDIS_PORT) -> bool:
    try:
        with socket.create_connection((REDIS_HOST, port), timeout=1):
            return True
    except OSError:
        return False


def postgres_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            pass
        create_engine(POSTGRES).connect().close()
        return True
    except Exception:
        return False


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """A URL of the test database whose tables land in a schema of this test's own (dropped after)."""
    if not postgres_up():
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES}")
    schema = f"momo_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(scope="session")
def fashion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The micro Fashion-MNIST split folders (train/val/test, 200/50/50 images of 10 classes)."""
    from training.data.prepare import prepare_all

    root = tmp_path_factory.mktemp("jobs_data")
    prepare_all(root, scale="micro", install_missing=False, progress=False)
    return root / "fashion_mnist"


def zip_folder(folder: Path, top: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{top}/{path.relative_to(folder).as_posix()}")
    return buf.getvalue()


@pytest.fixture()
def base_store(tmp_path: Path, test_config: Any, test_tokenizer: Any) -> Path:
    root = tmp_path / "model_store"
    register_random(ModelStore(root), test_config, test_tokenizer)  # momo-test:v1, active, no class head
    return root


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory, test_config: Any, test_tokenizer: Any) -> Path:
    root = tmp_path_factory.mktemp("jobs_store") / "model_store"
    register_random(ModelStore(root), test_config, test_tokenizer)
    return root


@pytest.fixture(scope="module")
def redis_url() -> str:
    if not redis_up():
        pytest.skip("Redis is not running on 127.0.0.1:6379 (make test starts an installed one)")
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{random.randint(1, 12)}"


@pytest.fixture(scope="module")
def queue(request: pytest.FixtureRequest) -> Iterator[str]:
    """A queue of this module's own; its keys (and unacknowledged messages) are removed afterwards."""
    name = f"momo-test-{uuid.uuid4().hex[:10]}"
    yield name
    if "redis_url" not in request.fixturenames or not redis_up():
        return
    import redis

    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    try:
        client.delete(name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")
        for tag, raw in client.hgetall("unacked").items():
            try:
                routing_key = json.loads(raw)[2]
            except (ValueError, IndexError, TypeError):
                continue
            if routing_key == name:
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
    finally:
        client.close()


class Worker:
    """A real `momo worker` process (its own process group), logging into a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> Worker:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "momo.cli", "worker"],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_bytes()[offset:].decode(errors="replace")
            if " ready." in text:
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited ({self.process.returncode}):\n{text[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # warm shutdown; the main process stops its children
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill_group()

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def job_env(
    *, store: Path, data_dir: Path, broker: str, queue: str, **extra: Any
) -> tuple[dict[str, str], dict[str, Any]]:
    """(worker environment, API settings overrides) for one job system."""
    settings: dict[str, Any] = {
        "model_store": store,
        "data_dir": data_dir,
        "broker_url": broker,
        "database_url": f"sqlite:///{data_dir / 'jobs.db'}",
        "data_root": data_dir / "datasets",
        "job_queue": queue,
        "job_threads": 1,
        "job_export_onnx": False,
        "job_heartbeat_s": 0.5,
        "job_stale_after_s": 30.0,
        "job_sweep_interval_s": 1.0,
        **extra,
    }
    env = settings_env(settings)
    env["MOMO_LOG_LEVEL"] = "info"
    overrides = {k: v for k, v in settings.items() if k not in ("model_store", "data_dir")}
    return env, overrides


def wait_for(
    client: httpx.Client, job_id: str, states: tuple[str, ...], timeout: float = 120.0, **cond: Any
) -> dict[str, Any]:
    """Poll GET /v1/fine-tunes/{id} until its state is one of `states` (and `cond` holds)."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = client.get(f"/v1/fine-tunes/{job_id}")
        assert r.status_code == 200, r.text
        job = r.json()
        if job["state"] in states and all(cond_fn(job) for cond_fn in cond.values()):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {states} in {timeout} s: {job}")


@pytest.fixture()
def worker_log(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "worker.log"
    yield path


@contextmanager
def api_with_worker(
    store: Path, data_dir: Path, env: dict[str, str], overrides: dict[str, Any]
) -> Iterator[tuple[LiveServer, Worker]]:
    """A real `momo worker` subprocess and a live API that sends it jobs (the API starts no worker)."""
    worker = Worker(env, data_dir / "worker.log")
    started = time.perf_counter()
    worker.start()
    print(f"\nworker ready in {time.perf_counter() - started:.1f} s")
    settings = make_settings(store, data_dir, job_worker="off", **overrides)
    try:
        with LiveServer(settings) as server:
            yield server, worker
    finally:
        worker.stop()


@pytest.fixture()
def client(system: tuple[LiveServer, Worker]) -> Iterator[httpx.Client]:
    """A client of the module's `system` (modules with another server define their own `client`)."""
    with system[0].client() as c:
        yield c
