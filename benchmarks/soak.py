"""Soak benchmark of `momo serve`: N clients for T seconds over a mix of endpoints, then hot swaps.

    .venv/bin/python benchmarks/soak.py                              # 64 clients, 5 minutes, 50 swaps
    .venv/bin/python benchmarks/soak.py --clients 16 --duration 60 --swaps 10     # a quick look

The server is `momo serve` in a subprocess (auth on, the default ONNX runtime, the store's active
model — the bundled momo-tiny:v1 — on a copy of the store that also holds a second version, v2, for
the swaps). Each client is an `httpx.AsyncClient` with one keep-alive connection and httpx's
default keep-alive expiry (5 s), and pauses between requests now and then — for up to 8 s, and half
of the time for just under 5 s — so idle connections are reused around the moment a server with a
5 s keep-alive closes them (the race that used to give connection resets). The mix: text and image
embeddings, zero-shot classification with random label sets (more distinct labels than the label
cache holds: entries are evicted), VQA, collection upserts (a bounded id space) and searches, item
reads, listings, /health, and two requests that must fail (invalid Unicode: 400, no key: 401).

It prints, for every minute: requests, ok / 4xx / 5xx / connection errors, p50 / p95 / p99 latency
and the server's RSS; then totals and RSS growth from minute 1 to the last minute. Then `--swaps`
activations alternating v1 and v2 with no load, RSS after each tenth, and the growth from the
second swap (both versions seen once) to the last. Targets (issue 13): 0 5xx, 0 connection errors,
RSS growth < 10 MiB over minutes 1..5; 50 swaps with RSS growth < 20 MiB. A benchmark, not a test:
the figures depend on the machine and its load (the load average is printed with them).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._load.inputs import WORDS  # noqa: E402
from benchmarks._load.servers import free_port  # noqa: E402

KEY = "soak-key"
MIB = 1024 * 1024


# --- the server --------------------------------------------------------------------------------------
def prepare_store(source: Path, work: Path) -> tuple[Path, str, str]:
    """A copy of `source` with the active version registered again as the next version (for swaps)."""
    from momo.store import ModelStore

    root = work / "model_store"
    shutil.copytree(source, root)
    store = ModelStore(root)
    active = store.resolve(None)
    name, first = active.parent.name, active.name

    def copy(directory: Path, version: str) -> None:
        for path in active.iterdir():
            shutil.copy2(path, directory / path.name)

    second = store.register(name, copy)
    return root, f"{name}:{first}", second.reference


def start_server(store: Path, work: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOMO_")}
    env.update(
        MOMO_API_KEYS=KEY,
        MOMO_MODEL_STORE=str(store),
        MOMO_DATA_DIR=str(work / "data"),
        MOMO_RUNTIME_CACHE_DIR=str(work / "cache"),
        MOMO_PORT=str(port),
        MOMO_LOG_LEVEL="warning",
        MOMO_JOB_WORKER="off",
        MOMO_WORKERS="1",  # one API process: its RSS is what is followed
        MOMO_RUNTIME=args.runtime,
    )
    if args.server_path:  # serve another checkout's code (e.g. main, for a before/after comparison)
        env["PYTHONPATH"] = args.server_path
    log = (work / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from momo.cli import main; main()", "serve"],
        cwd=args.server_path or ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{(work / 'serve.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not become ready")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- the clients -------------------------------------------------------------------------------------
def png(seed: int) -> str:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


IMAGES = [png(s) for s in range(8)]
LABELS = [f"{a} {b} {n}" for a in WORDS[:12] for b in WORDS[12:24] for n in range(60)]  # > the label cache


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(4, 12)))


def next_request(rng: random.Random) -> tuple[str, str, bytes | None, bool]:
    """(method, path, JSON body, authenticated) of one request of the mix."""
    kinds = ["embed", "embed_image", "classify", "vqa", "upsert", "search", "item", "list", "health"]
    kind = rng.choices([*kinds, "bad", "anon"], weights=[25, 10, 15, 8, 8, 14, 5, 4, 5, 3, 3])[0]
    body: object = None
    method, path = "POST", {"embed": "/v1/embeddings", "embed_image": "/v1/embeddings"}.get(kind, "")
    if kind == "embed":
        body = {"input": [sentence(rng) for _ in range(rng.randint(1, 4))]}
    elif kind == "embed_image":
        body = {"input": [rng.choice(IMAGES)]}
    elif kind == "classify":
        labels = rng.sample(LABELS, rng.randint(5, 20))
        path, body = "/v1/classify", {"input": sentence(rng), "labels": labels}
    elif kind == "vqa":
        path, body = "/v1/vqa", {"image": rng.choice(IMAGES), "question": "what color is the shape"}
    elif kind == "upsert":
        ids = dict.fromkeys(f"i{rng.randrange(500)}" for _ in range(4))  # unique within a request
        items = [{"id": i, "text": sentence(rng), "metadata": {"n": n}} for n, i in enumerate(ids)]
        path, body = "/v1/collections/soak/items", {"items": items}
    elif kind == "search":
        path, body = "/v1/collections/soak/search", {"query": sentence(rng), "top_k": 5}
    elif kind == "item":
        method, path = "GET", f"/v1/collections/soak/items/i{rng.randrange(500)}"
    elif kind == "list":
        method, path = "GET", rng.choice(["/v1/collections", "/v1/models"])
    elif kind == "health":
        method, path = "GET", "/health"
    elif kind == "bad":
        path, body = "/v1/embeddings", {"input": "x\ud800"}
    else:
        path, body = "/v1/embeddings", {"input": sentence(rng)}
    content = json.dumps(body).encode() if body is not None else None
    return method, path, content, kind != "anon"


@dataclass
class Minute:
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


async def client_loop(i: int, url: str, stop: float, minutes: list[Minute], started: float) -> None:
    rng = random.Random(i)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)  # httpx's 5 s expiry kept
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        while time.monotonic() < stop:
            method, path, content, authed = next_request(rng)
            sent = headers if authed else {"Content-Type": "application/json"}
            t0 = time.monotonic()
            minute = minutes[min(int((t0 - started) // 60), len(minutes) - 1)]
            try:
                r = await client.request(method, path, content=content, headers=sent)
                status = r.status_code
                minute.outcomes["ok" if status < 400 else "4xx" if status < 500 else "5xx"] += 1
                if status >= 500:
                    minute.errors[f"{status} {path}: {r.text[:120]}"] += 1
            except httpx.TransportError as exc:
                minute.outcomes["conn"] += 1
                minute.errors[f"{type(exc).__name__} {path}"] += 1
            minute.latencies.append(time.monotonic() - t0)
            if rng.random() < 0.1:  # an idle pause; half of them end just before httpx's 5 s expiry
                await asyncio.sleep(rng.uniform(4.85, 5.0) if rng.random() < 0.5 else rng.uniform(0, 8))


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p95, p99 = np.percentile(np.asarray(values) * 1000, [50, 95, 99])
    return f"{p50:7.1f} {p95:7.1f} {p99:7.1f}"


async def soak(url: str, pid: int, args: argparse.Namespace) -> list[float]:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        assert (await c.post("/v1/collections", json={"name": "soak"})).status_code == 201
    n_minutes = max(1, int(np.ceil(args.duration / 60)))
    minutes = [Minute() for _ in range(n_minutes)]
    started = time.monotonic()
    stop = started + args.duration
    tasks = [asyncio.create_task(client_loop(i, url, stop, minutes, started)) for i in range(args.clients)]
    rss: list[float] = []
    columns = f"{'min':>3} {'requests':>8} {'ok':>7} {'4xx':>6} {'5xx':>5} {'conn':>5}"
    print(f"{columns}   p50/p95/p99 ms      RSS MiB")
    for m in range(n_minutes):
        await asyncio.sleep(max(0.0, started + min(60 * (m + 1), args.duration) - time.monotonic()))
        rss.append(rss_mib(pid))
        if m == n_minutes - 1:
            await asyncio.gather(*tasks)
        o, latencies = minutes[m].outcomes, minutes[m].latencies
        counts = f"{len(latencies):>8} {o['ok']:>7} {o['4xx']:>6} {o['5xx']:>5} {o['conn']:>5}"
        print(f"{m + 1:>3} {counts}   {percentiles(latencies)}   {rss[-1]:8.1f}", flush=True)
    total: Counter[str] = sum((m.outcomes for m in minutes), Counter())
    errors: Counter[str] = sum((m.errors for m in minutes), Counter())
    all_latencies = [x for m in minutes for x in m.latencies]
    n = sum(total.values())
    print(
        f"total: {n} requests ({n / args.duration:.1f}/s), ok {total['ok']}, 4xx {total['4xx']}, "
        f"5xx {total['5xx']}, connection errors {total['conn']}; p50/p95/p99 "
        f"{' / '.join(percentiles(all_latencies).split())} ms"
    )
    for message, count in errors.most_common(10):
        print(f"  {count} x {message}")
    if len(rss) > 1:
        print(f"RSS minute 1 -> {len(rss)}: {rss[0]:.1f} -> {rss[-1]:.1f} MiB ({rss[-1] - rss[0]:+.1f} MiB)")
    return rss


def swaps(url: str, pid: int, references: tuple[str, str], count: int) -> None:
    """Hot swaps with no load, alternating the two versions; RSS once the old version is retired."""
    rss = [rss_mib(pid)]
    print(f"swaps: RSS before {rss[0]:.1f} MiB")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as c:
        for i in range(count):
            target = references[(i + 1) % 2]
            r = c.post(f"/v1/models/{target}/activate")
            assert r.status_code == 200, r.text
            time.sleep(0.5)  # a benchmark: let the old version's background retirement finish
            rss.append(rss_mib(pid))
            if (i + 1) % 10 == 0 or i == 0:
                print(f"  swap {i + 1:3d}: RSS {rss[-1]:7.1f} MiB", flush=True)
    if count >= 2:
        print(f"RSS swap 2 -> {count}: {rss[2]:.1f} -> {rss[-1]:.1f} MiB ({rss[-1] - rss[2]:+.1f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    parser.add_argument("--swaps", type=int, default=50, help="hot swaps after the load (0: none)")
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--runtime", default="onnx")
    parser.add_argument("--server-path", default=None, help="serve the code of this checkout instead")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="momo-soak-"))
    store, first, second = prepare_store(args.store, work)
    proc, url = start_server(store, work, args)
    try:
        print(f"server pid {proc.pid} on {url}, {first} (swaps with {second})")
        print(f"load average at the start {os.getloadavg()}")
        print(f"{args.clients} clients for {args.duration:.0f} s on {os.cpu_count()} CPUs")
        if args.clients and args.duration:
            asyncio.run(soak(url, proc.pid, args))
        if args.swaps:
            swaps(url, proc.pid, (first, second), args.swaps)
        print(f"load average at the end {os.getloadavg()}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
