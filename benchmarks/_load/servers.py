"""The servers a load benchmark drives: `momo serve` (one process or `--workers N`) and the bare ASGI
floors of `benchmarks/floor_app.py`, on free loopback ports, started and stopped in bounded time."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen[bytes], port: int, path: str, workers: int = 1) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode} (its log is kept in the work directory)"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                ready = s.recv(64).startswith(b"HTTP/1.1 200")
                if ready and (workers == 1 or len(worker_pids(proc.pid)) >= workers):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready")


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    workers: int

    def pids(self) -> list[int]:
        """The API processes: the server itself, or the workers of `--workers N`."""
        return worker_pids(self.proc.pid) if self.workers > 1 else [self.proc.pid]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def worker_pids(pid: int) -> list[int]:
    out = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    for child in children:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:  # uvicorn's workers (not the resource tracker)
            out.append(int(child))
    return out


def start_service(
    args: argparse.Namespace, store: Path, reference: str, work: Path, name: str, *flags: str
) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOMO_")}
    env["MOMO_CACHE_DIR"] = str(work / "cache")
    data = work / f"data-{name}"
    command = [
        sys.executable, "-c", "from momo.cli import main; main()", "serve",
        "--port", str(port), "--model-store", str(store), "--model", reference, "--runtime", args.runtime,
        "--data-dir", str(data), "--auth-disabled", "--queue-size", "4096",
        "--runtime-cache-dir", str(work / "cache"), "--no-gc-freeze" if args.no_gc_freeze else "--gc-freeze",
        *flags,
    ]  # fmt: skip
    workers = 1
    if "--workers" in flags:
        workers = int(flags[flags.index("--workers") + 1])
    log = (work / f"{name}.log").open("wb")  # the server's log (info: what `momo serve` writes by default)
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    wait_ready(proc, port, "/ready", workers)
    return Server(name, proc, port, workers)


def start_floor(kind: str) -> Server:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "floor_app.py"), "--kind", kind, "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return Server(kind, proc, port, 1)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{kind} floor did not start")
