"""Browser-test fixtures for the playground at /ui: a real `momo serve` subprocess on loopback with the
bundled model (a copy of the store, auth on), Debian's Chromium driven headless by Playwright, and a
page per test that fails the test on a console error, an uncaught exception or a request that leaves
the machine.

`make screenshots` runs these tests with MOMO_UI_SCREENSHOTS=docs/ui: each section's test then writes
its screenshot there (`Playground.shot`), so the pictures in the docs show states the tests checked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.service.helpers import settings_env

ROOT = Path(__file__).resolve().parents[3]
# the committed store's active version (what `make serve` serves)
_ACTIVE = json.loads((ROOT / "model_store" / "active.json").read_text())
BUNDLED = (str(_ACTIVE["name"]), str(_ACTIVE["version"]))
API_KEY = "ui-test-key"
CHROMIUM = Path("/usr/bin/chromium")
# Without these Chromium reaches out to the network (updates, field trials, sync, first-run pages).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
# Chromium logs every HTTP error response of a fetch as a console error; a test that provokes an
# error on purpose declares its status (`Playground.expect_http_errors`), any other one fails it.
NETWORK_ERROR = re.compile(r"^Failed to load resource: the server responded with a status of (\d{3})")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """`momo serve` as users run it (a subprocess, settings from MOMO_* variables), on 127.0.0.1."""

    def __init__(self, workdir: Path, **settings: Any) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "serve.log"
        values: dict[str, Any] = {
            "port": self.port,
            "data_dir": workdir / "data",
            "api_keys": API_KEY,
            "threads": 1,
            "job_threads": 1,
            "workers": 1,  # one API process: the browser tests follow one server's state
            "log_level": "warning",
            "collections_fsync": False,
            "gc_freeze": False,
            "job_heartbeat_s": 0.5,
            "job_sweep_interval_s": 1.0,
            **settings,
        }
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MOMO_")}
        self.env.update(settings_env(values))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> ServeProcess:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "momo.cli", "serve"],
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"momo serve exited ({self.process.returncode}):\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"momo serve not ready in {timeout} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # the lifespan also stops its embedded job worker
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def client(self, key: str | None = API_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def bundled_store(target: Path) -> Path:
    """A private copy of the committed store's bundled version (activations and fine-tunes write)."""
    name, version = BUNDLED
    shutil.copytree(ROOT / "model_store" / name / version, target / name / version)
    shutil.copy2(ROOT / "model_store" / "active.json", target / "active.json")
    return target


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One `momo serve` per test module on the bundled model, auth on."""
    workdir = tmp_path_factory.mktemp("playground")
    store = bundled_store(workdir / "model_store")
    serve = ServeProcess(workdir, model_store=store, runtime_cache_dir=workdir / "cache")
    serve.start()
    try:
        yield serve
    finally:
        serve.stop()


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's Chromium (apt: chromium, chromium-driver; never a downloaded browser), with a fresh
    profile directory, as one persistent Playwright context shared by the tests' pages."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport=DESKTOP,
            locale="en-US",
        )
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()


class Playground:
    """One browser page on the playground, with what the test must not see collected."""

    def __init__(self, page: Any, server: ServeProcess) -> None:
        self.page = page
        self.server = server
        self.allowed_statuses: set[int] = set()
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.outside_requests: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.route("**/*", self._only_loopback)

    def _on_console(self, message: Any) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def _only_loopback(self, route: Any) -> None:
        host = urlsplit(route.request.url).hostname
        if route.request.url.startswith(("data:", "blob:")) or host == "127.0.0.1":
            route.continue_()
        else:
            self.outside_requests.append(route.request.url)
            route.abort()

    def expect_http_errors(self, *statuses: int) -> None:
        """This test provokes API errors with these statuses (their console lines are expected)."""
        self.allowed_statuses.update(statuses)

    def open(self, section: str = "classify", key: str | None = API_KEY) -> Any:
        """Load /ui/ at a section, in a tab that already holds the API key (as after a user typed it
        in and reloaded; typing it is test_a_missing_or_wrong_key_explains_itself), or none."""
        if key is not None:
            self.page.add_init_script(f"sessionStorage.setItem('momo.apiKey', {json.dumps(key)})")
        self.page.goto(f"{self.server.url}/ui/#{section}")
        return self.page

    def shot(self, name: str) -> None:
        """Write docs/ui/<name>.png when `make screenshots` asked for them (MOMO_UI_SCREENSHOTS)."""
        folder = os.environ.get("MOMO_UI_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)

    def problems(self) -> list[str]:
        unexpected = []
        for text in self.console_errors:
            match = NETWORK_ERROR.match(text)
            if match is None or int(match.group(1)) not in self.allowed_statuses:
                unexpected.append(f"console error: {text}")
        return (
            unexpected
            + [f"uncaught exception: {e}" for e in self.page_errors]
            + [f"request outside loopback: {u}" for u in self.outside_requests]
        )


@pytest.fixture()
def playground(chromium: Any, server: ServeProcess) -> Iterator[Playground]:
    page = chromium.new_page()
    page.set_viewport_size(DESKTOP)
    view = Playground(page, server)
    try:
        yield view
    finally:
        page.close()
    assert not view.problems(), view.problems()


COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]  # the shapes world's (training.data.shapes)


def shape_png(color: str, shape: str = "circle", size: str = "large") -> bytes:
    """A 64x64 scene of the bundled model's shapes world with one centred object (a "clear image")."""
    from training.data.shapes import SIZES, Scene, ShapeObject
    from training.data.shapes_generation import scene_png

    obj = ShapeObject(color, shape, size, 32, 32, SIZES[size])
    return scene_png(Scene(seed=0, index=0, background="white", objects=[obj]))


@pytest.fixture()
def files(tmp_path: Path) -> Any:
    """write(name, bytes) -> a real file to hand to a file input."""

    def write(name: str, data: bytes) -> Path:
        path = tmp_path / "files" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    return write
