"""Service test helpers: random artifacts with heads, settings, a real uvicorn server on loopback (in a
thread of the test process, so tests can reach into `app.state` for hooks), a real `momo serve`
subprocess (for crashes and several processes), image builders."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from PIL import Image

from momo.heads import HeadSpec
from momo.store import ModelStore
from service.app import create_app
from service.server import uvicorn_config
from service.settings import Settings
from tests.factories import random_model, register_random

API_KEY = "test-key-123"
SHAPES = ["circle", "square", "triangle"]
TOPICS = ["fortune", "wordnet"]
COLORS = {"red": (210, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 210)}


def register_model(
    store: ModelStore,
    config: Any,
    tokenizer: Any,
    *,
    seed: int,
    name: str = "momo-test",
    extra_heads: bool = True,
    with_heads: bool = True,
    activate: bool = False,
) -> str:
    """A random-weight artifact (ITM + VQA heads, plus an image and a text classifier head)."""
    model = random_model(config, seed, with_heads=with_heads)
    if extra_heads:
        model.add_head("shapes", HeadSpec(input="image", labels=list(SHAPES)))
        model.add_head("topic", HeadSpec(input="text", labels=list(TOPICS)))

    info = register_random(store, config, tokenizer, name=name, seed=seed, activate=activate, model=model)
    return info.reference


def make_settings(model_store: Path, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model_store": model_store,
        "data_dir": data_dir,
        "runtime": "torch",
        "device": "cpu",
        "api_keys": [API_KEY],
        "log_json": True,
        "log_level": "warning",
        "access_log_sample": 1.0,  # tests read the line of every request
        "max_wait_ms": 2.0,
        "test_hooks": True,
        "gc_freeze": False,
        "collections_fsync": False,
    }
    values.update(overrides)
    return Settings(**values)


def settings_env(values: dict[str, Any]) -> dict[str, str]:
    """Settings as the MOMO_* environment variables a `momo serve` / `momo worker` process reads."""
    return {f"MOMO_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v) for k, v in values.items()}


class LiveServer:
    """uvicorn serving `create_app(settings)` on 127.0.0.1:<free port>, in a background thread."""

    def __init__(self, settings: Settings, app: Any = None) -> None:
        self.settings = settings
        self.app = app if app is not None else create_app(settings)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(self.app, settings, timeout_graceful_shutdown=30))
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()

    @property
    def services(self) -> Any:
        """The app's `service.deps.Services` (what its routes reach)."""
        return self.app.state.services

    @property
    def engine(self) -> Any:
        return self.services.engine

    def client(self, key: str | None = API_KEY, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def momo_command() -> list[str]:
    """The `momo` entry point of this venv (or the module when it is not installed as a script)."""
    exe = Path(sys.executable).with_name("momo")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from momo.cli import main; main()"]


class ServeProcess:
    """A real `momo serve` process on 127.0.0.1:<free port>, configured by MOMO_* variables (so it
    also runs on code that lacks a setting); its output goes to `log`."""

    def __init__(self, model_store: Path, data_dir: Path, log: Path, **settings: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        values = {
            "model_store": model_store,
            "data_dir": data_dir,
            "port": self.port,
            "runtime": "torch",
            "device": "cpu",
            "threads": 1,
            "workers": 1,
            "api_keys": API_KEY,
            "log_level": "warning",
            "gc_freeze": False,
            "job_worker": "off",
            **settings,
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOMO_")}
        env.update(
            {
                f"MOMO_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in values.items()
            }
        )
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> ServeProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*momo_command(), "serve"], env=self.env, stdout=out, stderr=subprocess.STDOUT
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
            time.sleep(0.1)
        raise RuntimeError(f"momo serve not ready in {timeout} s:\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop with `sig` (SIGKILL: a crash) and return the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        return self.process.wait(60)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60, **kwargs
        )

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- inputs --------------------------------------------------------------------------------------
def png_bytes(
    color: tuple[int, int, int] = (200, 30, 30),
    size: tuple[int, int] = (20, 20),
    seed: int | None = None,
    fmt: str = "PNG",
) -> bytes:
    if seed is not None:
        rng = np.random.default_rng(seed)
        img = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    else:
        img = Image.new("RGB", size, color)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_uri(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64,{b64(data)}"


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error"}, body
    error = body["error"]
    assert {"message", "type", "code"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


# --- raw HTTP ------------------------------------------------------------------------------------
class RawConnection:
    """A plain TCP connection to a server, for what HTTP clients will not do: a request head sent in
    pieces, a body announced and never sent, a connection kept idle on purpose."""

    def __init__(self, port: int, timeout: float = 15.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_response(self) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of the next response (socket timeout: the server never answered)."""
        while b"\r\n\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before a response head: {self._buffer!r}")
            self._buffer += chunk
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        length = int(headers.get("content-length", "0"))
        while len(self._buffer) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self._buffer += chunk
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return int(status_line.split()[1]), headers, body

    def closed_by_server(self, within: float) -> bool:
        """Wait up to `within` seconds for the server to close the connection."""
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(65536):
                    return True
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
        return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request_head(method: str, path: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --- datasets ------------------------------------------------------------------------------------
def noisy_color_png(color: tuple[int, int, int], rng: np.random.Generator) -> bytes:
    """A 20x20 PNG of one colour with per-pixel noise (an easy class for a fine-tuned head)."""
    noise = rng.integers(-40, 40, size=(20, 20, 3))
    pixels = np.clip(np.asarray(color)[None, None, :] + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def colors_zip(per_class: int, seed: int) -> bytes:
    """An image-folder dataset as a zip (`red/000.png`, ...): `per_class` images of each of COLORS."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for label, color in COLORS.items():
            for i in range(per_class):
                zf.writestr(f"{label}/{i:03d}.png", noisy_color_png(color, rng))
    return buf.getvalue()
