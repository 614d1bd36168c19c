"""Load benchmark of `momo serve` against the bare ASGI floors and the runtime's in-process limit.

    .venv/bin/python benchmarks/serve_load.py              # the store's active model (bundled momo-tiny)
    .venv/bin/python benchmarks/serve_load.py --quick      # shorter runs (a smoke test, not figures)
    .venv/bin/python benchmarks/serve_load.py --json out.json

The load generator is `wrk` (Debian package `wrk`, in the Makefile's APT_PACKAGES) with a Lua script
that rotates over prepared request bodies and prints its own p50/p99: a compiled client that costs a
few percent of one core (printed per run), so the measured cores serve the service, not the client.

One run measures, on one machine, in this order:
1. the limit: the runtime alone in this process, best embeddings/s over batch sizes with tokenising
   (or image decoding) included; and the same with the cores split between N processes (as
   `--workers N` splits them). Efficiency below = served embeddings/s / the higher of the two;
2. the floors: bare uvicorn + Starlette and uvicorn + FastAPI + pydantic (benchmarks/floor_app.py),
   same server settings, one text per request, at 32 connections;
3. the service with one API process at 1/8/32/64 connections, one text per request (short WordNet
   glosses of about 16 tokens); the same with an access log line for every request (its cost);
4. the service with its defaults (`--workers` from the core count) at 1/8/32/64 connections;
5. 8 texts per request and one image per request, at 32 connections, both server modes.

Printed per run: requests/s, embeddings/s, p50 and p99 (wrk's), efficiency, event-loop CPU per
request (the main thread of each API process, from /proc/<pid>/task/<tid>/stat) and its ratio to the
FastAPI floor's, the server's CPU per request (all threads), how busy the machine was (/proc/stat)
and the load generator's own CPU. Nothing leaves loopback; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._load.inputs import png_pool, request_bodies, wordnet_glosses  # noqa: E402
from benchmarks._load.servers import Server, start_floor, start_service  # noqa: E402
from benchmarks._load.wrk import Run, drive, lua_script, show  # noqa: E402


# --- the limit ----------------------------------------------------------------------------------------
class Limit:
    """The runtime alone in this process: embeddings/s per batch size, preprocessing included."""

    def __init__(self, store: Path, reference: str, runtime: str, threads: int | None, modality: str):
        from momo.runtime import load_runtime
        from momo.store import ModelStore

        self.runtime = load_runtime(reference, runtime, store=ModelStore(store), threads=threads)
        artifact = self.runtime.artifact
        self.modality = modality
        self.texts = wordnet_glosses(artifact.tokenizer, 1024)
        self.images = png_pool(64, artifact.config.image_size) if modality == "image" else []
        self.per_batch: dict[int, float] = {}

    def _run(self, batch: int, start: int) -> None:
        artifact = self.runtime.artifact
        if self.modality == "image":
            from momo.preprocess import decode_image, preprocess_images

            chunk = [self.images[(start + k) % len(self.images)] for k in range(batch)]
            self.runtime.encode_images(preprocess_images([decode_image(b) for b in chunk], artifact.config))
        else:
            texts = [self.texts[(start + k) % len(self.texts)] for k in range(batch)]
            tok = artifact.tokenizer.encode_batch(texts, max_length=artifact.config.max_text_len)
            self.runtime.encode_texts(tok.input_ids, tok.attention_mask)

    def measure(self, batch: int, seconds: float) -> float:
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            self._run(batch, done)
            done += batch
        return done / (time.perf_counter() - t0)

    def sweep(self, seconds: float, batches: tuple[int, ...] = (1, 8, 16, 32, 64)) -> float:
        for b in batches:
            self.per_batch[b] = self.measure(b, seconds)
        return max(self.per_batch.values())


def split_limit(args: argparse.Namespace, store: Path, reference: str, procs: int, modality: str) -> float:
    """The limit with the cores split between `procs` processes running at once (summed)."""
    threads = max(1, (os.cpu_count() or 1) // procs)
    command = [
        sys.executable,
        __file__,
        "--limit-child",
        "--store",
        str(store),
        "--model",
        reference,
        "--runtime",
        args.runtime,
        "--modality",
        modality,
        "--threads",
        str(threads),
        "--limit-seconds",
        str(args.limit_seconds),
    ]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    total = 0.0
    for child in children:
        out, _ = child.communicate(timeout=600)
        total += float(out.strip().splitlines()[-1])
    return total


def limit_child(args: argparse.Namespace) -> None:
    limit = Limit(args.store, args.model, args.runtime, args.threads, args.modality)
    limit.sweep(0.3, (32,))  # warm
    print(limit.measure(32, args.limit_seconds * 3), flush=True)


# --- main ---------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model", default=None, help="name:version (default: the store's active one)")
    parser.add_argument("--runtime", default="onnx", help="the service's runtime (and the limit's)")
    parser.add_argument("--modality", default="text")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--connections", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=8.0, help="per measured run (after 1 s warm-up)")
    parser.add_argument("--limit-seconds", type=float, default=1.5)
    parser.add_argument("--workers", type=int, default=None, help="the multi-process run (default: cores)")
    parser.add_argument("--no-gc-freeze", action="store_true")
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test of this script")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server logs)")
    parser.add_argument("--limit-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.limit_child:
        limit_child(args)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk (it is in the Makefile's APT_PACKAGES)")
    if args.quick:
        args.seconds, args.limit_seconds = 2.0, 0.4
    levels = [int(c) for c in args.connections.split(",")]
    cores = os.cpu_count() or 1
    workers = args.workers or min(cores, 8)

    from momo.store import ModelStore

    store = ModelStore(args.store)
    reference = store.reference_of(store.locate(args.model))
    work = Path(tempfile.mkdtemp(prefix="momo-bench-"))
    print(
        f"model {reference}, runtime {args.runtime}, {cores} CPUs, load average {os.getloadavg()[0]:.2f}; "
        f"wrk {subprocess.run(['wrk', '-v'], capture_output=True, text=True).stdout.split()[1]}",
        flush=True,
    )
    runs: list[Run] = []
    limits: dict[str, dict[str, Any]] = {}
    try:
        # 1. the limits
        for modality in ("text", "image"):
            limit = Limit(args.store, reference, args.runtime, args.threads, modality)
            one = limit.sweep(args.limit_seconds)
            limit.runtime.close()
            split = split_limit(args, args.store, reference, workers, modality) if workers > 1 else 0.0
            limits[modality] = {"one_process": one, "per_batch": limit.per_batch, "split": split}
            per_batch = ", ".join(f"b{b} {v:.0f}" for b, v in limit.per_batch.items())
            print(
                f"limit {modality}: {one:.0f} emb/s in one process ({per_batch}); "
                f"{split:.0f} emb/s in {workers} processes x {max(1, cores // workers)} thread(s)",
                flush=True,
            )
        tokenizer = ModelStore(args.store).load(reference).tokenizer
        config = ModelStore(args.store).load(reference).config
        texts = wordnet_glosses(tokenizer, 512)
        images = png_pool(32, config.image_size)
        scripts = {
            (m, k): lua_script(request_bodies(texts, images, k, m), work / f"{m}{k}.lua")
            for m, k in (("text", 1), ("text", 8), ("image", 1))
        }

        def measure(server: Server, connections: int, modality: str = "text", per_request: int = 1) -> Run:
            run = drive(
                server, scripts[(modality, per_request)], connections, args.seconds, per_request, modality
            )
            best = max(limits[modality]["one_process"], limits[modality]["split"])
            run.efficiency = run.emb_s / best
            floor = next((r for r in runs if r.name == "fastapi floor"), None)
            if floor is not None and floor.loop_ms_per_req > 0:
                run.loop_vs_floor = run.loop_ms_per_req / floor.loop_ms_per_req
            runs.append(run)
            show(run)
            return run

        # 2. the floors
        print("floors (no model):", flush=True)
        for kind in ("starlette", "fastapi"):
            floor = start_floor(kind)
            try:
                run = measure(floor, 32)
                run.name = f"{kind} floor"
            finally:
                floor.stop()
        # 3.-5. the service
        modes = [
            ("1 process", ["--workers", "1"]),
            (f"--workers {workers}", ["--workers", str(workers)]),
        ]
        for name, flags in modes:
            print(f"service, {name}:", flush=True)
            server = start_service(args, args.store, reference, work, name.replace(" ", "-"), *flags)
            server.name = f"service {name}"
            try:
                for connections in levels:
                    measure(server, connections)
                measure(server, 32, "text", 8)
                measure(server, 32, "image", 1)
            finally:
                server.stop()
        print("service, 1 process, an access log line for every request:", flush=True)
        server = start_service(
            args, args.store, reference, work, "fulllog", "--workers", "1", "--access-log-sample", "1"
        )
        server.name = "service full-log"
        try:
            measure(server, 32)
        finally:
            server.stop()

        print("\nsummary (one text per request):")
        floor = next(r for r in runs if r.name == "fastapi floor")
        for r in runs:
            if r.modality == "text" and r.per_request == 1:
                show(r)
        single32 = next(
            r for r in runs if r.name == "service 1 process" and r.connections == 32 and r.per_request == 1
        )
        multi32 = next(
            r
            for r in runs
            if r.name.startswith("service --workers") and r.connections == 32 and r.per_request == 1
        )
        single1 = next((r for r in runs if r.name == "service 1 process" and r.connections == 1), None)
        one = next((r for r in runs if r.name.startswith("service --workers") and r.connections == 1), None)
        at_one = " / ".join(
            f"{r.req_s:.0f} req/s, p50 {r.p50_ms:.2f} ms ({label})"
            for r, label in ((single1, "1 process"), (one, "workers"))
            if r is not None
        )
        full = next(r for r in runs if r.name == "service full-log")
        print(
            f"targets at 32 connections: efficiency {single32.efficiency:.2f} (1 process), "
            f"{multi32.efficiency:.2f} (--workers {workers}) [>= 0.8]; event-loop CPU "
            f"{single32.loop_ms_per_req / floor.loop_ms_per_req:.2f}x the FastAPI floor [<= 2]; "
            f"p99/p50 {single32.p99_ms / single32.p50_ms:.2f} (1 process), "
            f"{multi32.p99_ms / multi32.p50_ms:.2f} (workers) [<= 2]; "
            f"1 connection: {at_one} [>= 521 req/s, p50 <= 1.9 ms]"
        )
        print(
            f"access log, a line per request vs the default sample: "
            f"{full.loop_ms_per_req - single32.loop_ms_per_req:+.3f} ms of event-loop CPU per request "
            f"({full.req_s:.0f} vs {single32.req_s:.0f} req/s)"
        )
        if args.json:
            args.json.write_text(json.dumps({"limits": limits, "runs": [asdict(r) for r in runs]}, indent=2))
    finally:
        if args.keep:
            print(f"work directory (server logs): {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
