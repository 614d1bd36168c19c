"""Load benchmark of the MoMo HTTP service (`momo serve`) against the runtime's own limit.

    .venv/bin/python benchmarks/serve_load.py          # the bundled active model, or a random momo-tiny
    .venv/bin/python benchmarks/serve_load.py --model momo-tiny:v1 --store model_store --runtime onnx
    .venv/bin/python benchmarks/serve_load.py --quick  # fewer requests, one repeat
    .venv/bin/python benchmarks/serve_load.py --inputs-per-request 8 --modality image

What one run prints:
1. the limit — the runtime's best in-process batched throughput (embeddings/s over batch sizes,
   tokenising or image decoding included), measured in this process;
2. the service — `momo serve` started as a subprocess, driven from this process over loopback by
   N concurrent keep-alive clients (1, 8, 32, 64), one text per request by default (the hard case
   for an HTTP service: every embedding pays the whole HTTP cost): embeddings/s, p50/p95/p99
   latency, ratio to the limit — also to the limit re-measured just before each run, since a
   shared machine's capacity moves;
3. batching on vs off — a second server with `--no-batching` (batches of one), driven alternately
   with the first at 32 and 64 clients;
4. each API process's peak RSS (VmHWM from /proc).

The load generator is a minimal HTTP/1.1 keep-alive client on asyncio streams, so that the driver
takes as little CPU as possible from the server on a small machine. Request counts are bounded
(`--requests` per level). Nothing here needs a network beyond loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = [
    "red", "green", "blue", "yellow", "purple", "small", "large", "circle", "square", "triangle", "left",
    "right", "above", "below", "photo", "sneaker", "boot", "dress", "shirt", "emoji", "face", "cat", "dog",
    "fox", "jumps", "over", "the", "lazy", "quick", "brown",
]  # fmt: skip


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 12)))) for _ in range(n)]


# --- the model ------------------------------------------------------------------------------------
def random_store(directory: Path, preset: str) -> tuple[Path, str]:
    """A store with one random-weight artifact of `preset` (when no trained model is around)."""
    import torch

    from momo.artifact import Manifest, save_artifact
    from momo.config import get_preset
    from momo.heads import ITM_SPEC, HeadSpec
    from momo.model import MoMoModel
    from momo.store import ModelStore
    from momo.tokenizer import MoMoTokenizer

    config = get_preset(preset)
    torch.manual_seed(0)
    corpus = make_texts(2000, seed=1) + [" ".join(WORDS)] * 10
    tokenizer = MoMoTokenizer.train(corpus, vocab_size=config.vocab_size, min_frequency=1)
    heads = {"itm": ITM_SPEC, "vqa": HeadSpec(input="pair", labels=["yes", "no", "red", "blue"], task="vqa")}
    model = MoMoModel(config, head_specs=heads).eval()
    store = ModelStore(directory)

    def write(path: Path, version: str) -> None:
        save_artifact(path, model, tokenizer, Manifest(name=preset, version=version, recipe={"random": True}))

    info = store.register(preset, write)
    store.activate(info.reference)
    return directory, info.reference


def image_pool(n: int, seed: int = 0) -> list[bytes]:
    """Small PNGs of coloured noise (decoding them is part of the work, as in the service)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


class Limit:
    """The runtime alone, in this process: the best embeddings/s over batch sizes (the limit). Kept
    loaded so that it can be re-measured right before each load level (the machine may be shared)."""

    def __init__(
        self, store: Path, reference: str, kind: str, threads: int | None, cache: Path, modality: str
    ):
        from momo.runtime import load_runtime
        from momo.store import ModelStore

        self.runtime = load_runtime(
            reference, kind, store=ModelStore(store), threads=threads, cache_dir=cache
        )
        self.modality = modality
        self.texts = make_texts(1024, seed=7)
        self.images = image_pool(64, seed=7) if modality == "image" else []
        self.per_batch: dict[int, float] = {}
        self.best_batch = 1

    def _run(self, batch_size: int, start: int) -> int:
        artifact = self.runtime.artifact
        if self.modality == "image":
            from momo.preprocess import decode_image, preprocess_images

            chunk = [self.images[(start + k) % len(self.images)] for k in range(batch_size)]
            pixels = preprocess_images([decode_image(b) for b in chunk], artifact.config)
            self.runtime.encode_images(pixels)
        else:
            texts = [self.texts[(start + k) % len(self.texts)] for k in range(batch_size)]
            batch = artifact.tokenizer.encode_batch(texts, max_length=artifact.config.max_text_len)
            self.runtime.encode_texts(batch.input_ids, batch.attention_mask)
        return batch_size

    def measure(self, batch_size: int, seconds: float) -> float:
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            done += self._run(batch_size, done)
        return done / (time.perf_counter() - started)

    def sweep(self, seconds: float) -> float:
        for batch_size in (1, 8, 16, 32, 64, 128):
            self.per_batch[batch_size] = self.measure(batch_size, seconds)
        self.best_batch = max(self.per_batch, key=lambda b: self.per_batch[b])
        return self.per_batch[self.best_batch]

    @property
    def limit(self) -> float:
        return self.per_batch[self.best_batch]


# --- the server -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    args: argparse.Namespace, store: Path, reference: str, data_dir: Path, *, batching: bool, cache: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOMO_")}
    env["MOMO_CACHE_DIR"] = str(cache)
    command = [
        sys.executable,
        "-c",
        "from momo.cli import main; main()",
        "serve",
        "--port",
        str(port),
        "--model-store",
        str(store),
        "--model",
        reference,
        "--runtime",
        args.runtime,
        "--data-dir",
        str(data_dir),
        "--auth-disabled",
        "--log-level",
        "warning",
        "--max-batch",
        str(args.max_batch),
        "--max-wait-ms",
        str(args.max_wait_ms),
        "--queue-size",
        "4096",
        "--runtime-cache-dir",
        str(cache),
        "--batching" if batching else "--no-batching",
    ]
    server_threads = args.server_threads if args.server_threads is not None else args.threads
    if server_threads:
        command += ["--threads", str(server_threads)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready")


def stop_server(proc: subprocess.Popen[bytes]) -> int:
    """SIGINT (graceful) and return the peak RSS in MiB, read just before it exits."""
    rss = peak_rss_mib(proc.pid)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    return rss


def peak_rss_mib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return -1


# --- the load generator -----------------------------------------------------------------------------
class RawClient:
    """One keep-alive HTTP/1.1 connection; POST JSON, read status + body. Minimal on purpose."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return int(status_line.split()[1]), payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class LevelResult:
    clients: int
    requests: int
    errors: int
    seconds: float
    embeddings_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def make_bodies(requests: int, inputs_per_request: int, modality: str, seed: int) -> list[bytes]:
    if modality == "image":
        pool = [f"data:image/png;base64,{base64.b64encode(b).decode()}" for b in image_pool(64, seed=seed)]
        inputs = [pool[k % len(pool)] for k in range(requests * inputs_per_request)]
    else:
        inputs = make_texts(max(256, requests * inputs_per_request), seed=seed)
    return [
        json.dumps(
            {"input": inputs[i * inputs_per_request : (i + 1) * inputs_per_request], "model": "momo"}
        ).encode()
        for i in range(requests)
    ]


async def drive(port: int, clients: int, bodies: list[bytes], inputs_per_request: int) -> LevelResult:
    requests = len(bodies)
    latencies: list[float] = []
    errors = 0
    next_index = 0

    async def worker() -> None:
        nonlocal next_index, errors
        client = RawClient(port)
        try:
            while next_index < requests:
                body = bodies[next_index]
                next_index += 1
                t0 = time.perf_counter()
                status, _payload = await client.post("/v1/embeddings", body)
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    errors += 1
        finally:
            await client.close()

    # warm-up: connections open and a few requests through
    warm = RawClient(port)
    for body in bodies[:4]:
        await warm.post("/v1/embeddings", body)
    await warm.close()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    seconds = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, round(p / 100 * (len(ms) - 1)))]

    return LevelResult(
        clients, requests, errors, seconds, requests * inputs_per_request / seconds, pct(50), pct(95), pct(99)
    )


# --- main -------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, default=ROOT / "model_store", help="store with an active model")
    parser.add_argument("--model", default=None, help="name:version (default: the store's active one)")
    parser.add_argument("--preset", default="momo-tiny", help="random model preset when the store has none")
    parser.add_argument("--runtime", default="onnx", choices=["onnx", "onnx-int8", "torch"])
    parser.add_argument("--modality", default="text", choices=["text", "image"])
    parser.add_argument("--threads", type=int, default=None, help="runtime intra-op threads for the limit")
    parser.add_argument("--server-threads", type=int, default=None, help="runtime threads in the server")
    parser.add_argument("--clients", default="1,8,32,64", help="concurrency levels")
    parser.add_argument(
        "--requests", type=int, default=1500, help="requests per level (at least 10 per client)"
    )
    parser.add_argument("--inputs-per-request", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--limit-seconds", type=float, default=2.0, help="time per batch size for the limit")
    parser.add_argument("--repeats", type=int, default=2, help="runs per (mode, level); the best is kept")
    parser.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.limit_seconds, args.repeats = 300, 0.7, 1
    levels = [int(x) for x in args.clients.split(",")]

    from momo.store import ModelStore, StoreError

    work = Path(tempfile.mkdtemp(prefix="momo-bench-"))
    cache = work / "cache"
    try:
        try:
            path = ModelStore(args.store).locate(args.model)
            store, reference, source = args.store, ModelStore(args.store).reference_of(path), "store"
        except StoreError:
            store, reference = random_store(work / "store", args.preset)
            source = f"random {args.preset}: no trained model in {args.store}"
        print(
            f"model {reference} [{source}], runtime {args.runtime}, {args.modality} inputs, "
            f"{args.inputs_per_request} per request, {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )

        limit = Limit(store, reference, args.runtime, args.threads, cache, args.modality)
        limit.sweep(args.limit_seconds)
        per_batch = ", ".join(f"b{b}={v:.0f}" for b, v in limit.per_batch.items())
        print(
            f"limit (runtime in-process): {limit.limit:.0f} embeddings/s at batch {limit.best_batch} "
            f"({per_batch})",
            flush=True,
        )

        results: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        rss: dict[str, int] = {}
        # Both servers run side by side (idle when not driven) and are driven alternately, level by
        # level and `--repeats` times, so that a busy neighbour on a shared machine does not bias
        # one mode; the best run of each (mode, level) is kept.
        servers = {
            mode: start_server(
                args, store, reference, work / f"data-{mode}", batching=mode == "on", cache=cache
            )
            for mode in ("on", "off")
        }
        try:
            for clients in levels:
                modes = ("on", "off") if clients >= 32 or clients == levels[-1] else ("on",)
                best: dict[str, dict[str, Any]] = {}
                for repeat in range(args.repeats):
                    for mode in modes if repeat % 2 == 0 else tuple(reversed(modes)):
                        # the machine may be shared: re-measure the limit right before each run
                        local_limit = limit.measure(limit.best_batch, max(0.5, args.limit_seconds / 2))
                        bodies = make_bodies(
                            max(args.requests, clients * 10),
                            args.inputs_per_request,
                            args.modality,
                            seed=clients,
                        )
                        result = asyncio.run(
                            drive(servers[mode][1], clients, bodies, args.inputs_per_request)
                        )
                        row = {
                            **result.__dict__,
                            "limit_now": local_limit,
                            "ratio": result.embeddings_per_s / limit.limit,
                            "ratio_now": result.embeddings_per_s / local_limit,
                        }
                        print(
                            f"  batching {mode:<3} {clients:>3} clients: "
                            f"{result.embeddings_per_s:6.0f} emb/s  "
                            f"ratio {row['ratio']:.2f} (to the limit re-measured now, {local_limit:.0f}/s: "
                            f"{row['ratio_now']:.2f})  p50 {result.p50_ms:.1f}  p95 {result.p95_ms:.1f}  "
                            f"p99 {result.p99_ms:.1f} ms  errors {result.errors}",
                            flush=True,
                        )
                        if mode not in best or row["embeddings_per_s"] > best[mode]["embeddings_per_s"]:
                            best[mode] = row
                for mode, row in best.items():
                    results[mode].append(row)
        finally:
            for mode, (proc, _port) in servers.items():
                rss[mode] = stop_server(proc)
        limit.runtime.close()

        print()
        print(
            f"limit: {limit.limit:.0f} emb/s (batch {limit.best_batch}, {limit.runtime.kind} on "
            f"{limit.runtime.device}); batch 1 in-process: {limit.per_batch[1]:.0f} emb/s "
            f"(the runtime's own batching gain: {limit.limit / limit.per_batch[1]:.2f}x)"
        )
        header = ("clients", "emb/s", "ratio", "ratio*", "p50 ms", "p95 ms", "p99 ms", "errors")
        print(" ".join(f"{h:>8}" for h in header) + "   (ratio* = to the limit re-measured before the level)")
        for r in results["on"]:
            print(
                f"{r['clients']:>8} {r['embeddings_per_s']:>8.0f} {r['ratio']:>8.2f} {r['ratio_now']:>8.2f} "
                f"{r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['errors']:>8}"
            )
        speedups: dict[int, float] = {}
        for off in results["off"]:
            on = next((r for r in results["on"] if r["clients"] == off["clients"]), None)
            if on:
                speedups[off["clients"]] = on["embeddings_per_s"] / off["embeddings_per_s"]
                print(
                    f"batching on/off at {off['clients']} clients: {speedups[off['clients']]:.2f}x "
                    f"({on['embeddings_per_s']:.0f} vs {off['embeddings_per_s']:.0f} emb/s)"
                )
        print(f"API process peak RSS: {rss['on']} MiB (batching on), {rss['off']} MiB (off)")
        high = [r for r in results["on"] if r["clients"] >= 32]
        if high:
            ratios = [r["ratio"] for r in high]
            ratios_now = [r["ratio_now"] for r in high]
            speedup = min(speedups.values(), default=float("nan"))
            print(
                f"at 32+ clients: {min(ratios):.2f}-{max(ratios):.2f}x the limit "
                f"({min(ratios_now):.2f}-{max(ratios_now):.2f}x the re-measured one; target >= 0.8), "
                f"batching {speedup:.2f}x unbatched (target >= 3)"
            )
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "model": reference,
                        "source": source,
                        "modality": args.modality,
                        "inputs_per_request": args.inputs_per_request,
                        "limit": limit.limit,
                        "best_batch": limit.best_batch,
                        "per_batch": limit.per_batch,
                        "rss_mib": rss,
                        "speedup": speedups,
                        "levels": results,
                    },
                    indent=2,
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
