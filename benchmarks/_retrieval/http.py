"""The retrieval benchmark through HTTP: `momo serve` (the bundled model, ONNX) as a subprocess, text
items ingested by concurrent clients, and the API's peak RSS when it opens a large store."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._load.inputs import make_texts

ROOT = Path(__file__).resolve().parents[2]


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def http_ingest(url: str, label: str, n_items: int, workdir: Path, port: int) -> dict[str, Any]:
    import httpx

    env = {k: v for k, v in os.environ.items() if not k.startswith("MOMO_")}
    env.update(
        {
            "MOMO_PORT": str(port),
            "MOMO_AUTH_DISABLED": "true",
            "MOMO_DATA_DIR": str(workdir / f"http-{label}"),
            "MOMO_COLLECTIONS_URL": url,
            "MOMO_LOG_LEVEL": "warning",
            "MOMO_JOB_WORKER": "off",
            "MOMO_RUNTIME_CACHE_DIR": str(workdir / "cache"),
        }
    )
    log = (workdir / f"http-{label}.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "momo.cli", "serve"], env=env, stdout=log, stderr=log, cwd=ROOT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"momo serve did not start ({label}); see {log.name}")
            time.sleep(0.2)
        httpx.post(f"{base}/v1/collections", json={"name": "bench"}, timeout=30).raise_for_status()
        texts = make_texts(n_items, seed=1)
        per_request, clients = 32, 4
        chunks = [list(range(i, min(i + per_request, n_items))) for i in range(0, n_items, per_request)]
        errors: list[str] = []

        def client(part: list[list[int]]) -> None:
            with httpx.Client(base_url=base, timeout=120) as c:
                for chunk in part:
                    body = {"items": [{"id": f"t{i}", "text": texts[i], "metadata": {"n": i}} for i in chunk]}
                    r = c.post("/v1/collections/bench/items", json=body)
                    if r.status_code != 200:
                        errors.append(r.text[:200])

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(chunks[i::clients],)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        count = httpx.get(f"{base}/v1/collections/bench", timeout=30).json()["count"]
        return {
            "items_per_s": n_items / elapsed,
            "items": count,
            "errors": len(errors),
            "api_peak_rss_mib": vm_hwm_mib(server.pid),
        }
    finally:
        server.terminate()
        server.wait(60)


def api_rss_on(url: str, workdir: Path) -> float:
    """Peak RSS of `momo serve` that opens (and indexes) an existing store."""
    import httpx

    env = {k: v for k, v in os.environ.items() if not k.startswith("MOMO_")}
    env.update({"MOMO_PORT": "18790", "MOMO_AUTH_DISABLED": "true", "MOMO_COLLECTIONS_URL": url,
                "MOMO_DATA_DIR": str(workdir / "rss"), "MOMO_LOG_LEVEL": "info", "MOMO_JOB_WORKER": "off",
                "MOMO_RUNTIME_CACHE_DIR": str(workdir / "cache")})  # fmt: skip
    log_path = workdir / "rss.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "momo.cli", "serve"], env=env, stdout=log, stderr=log, cwd=ROOT
        )
    try:
        deadline = time.monotonic() + 3600
        while "HNSW graph of" not in log_path.read_text(errors="replace"):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"momo serve on the 1M store failed; see {log_path}")
            time.sleep(1)
        httpx.post("http://127.0.0.1:18790/v1/collections/bench/search", json={"query": "x"}, timeout=60)
        return vm_hwm_mib(server.pid)
    finally:
        server.terminate()
        server.wait(120)
