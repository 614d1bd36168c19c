"""Retrieval benchmark: both collection stores, exact and HNSW, ingest, search, filters, RSS.

    .venv/bin/python benchmarks/retrieval.py                       # 10k, 100k, 1M; everything
    .venv/bin/python benchmarks/retrieval.py --sizes 10000,100000 --pg-sizes 10000 --skip-http

What one run prints (and writes to --out as JSON):
1. HTTP ingest: `momo serve` (the bundled model, ONNX) as a subprocess per backend, text items
   posted by 4 clients in requests of 32: items/s (embedding included), the API's peak RSS;
2. store ingest as the collection grows (direct calls, requests of 100 items, fsync on): items/s
   per tenth of the run, the new embedded store against the store it replaced (snapshot + WAL,
   from git at --baseline-commit) - the old one stalls while it rewrites its snapshot;
3. search at each N (vectors of the model's dimension, 128): p50/p99 latency of exact and HNSW
   search, and recall@10 of HNSW against exact, for the embedded store (FAISS) and PostgreSQL +
   pgvector (the `pgserver` wheel: PostgreSQL 16, pgvector 0.6; or --pg-url);
4. a filtered search at the largest N (metadata `shard`, 1 % of the items): latency and how many
   items the filter leaves - scored exactly, not a scan;
5. at the largest embedded N: the peak RSS of `momo serve` opening that store (index + graph).

Vectors are SYNTHETIC, clustered unit vectors (1,000 Gaussian clusters), since the bundled model
cannot embed a million real items on this machine in a benchmark's time; queries are new points of
the same clusters. Latency is per query, one at a time, in this process (the store's own cost,
without HTTP).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.collections import CollectionStore, NewItem, SearchTuning, create_store  # noqa: E402

DIM = 128
K = 10
RESULTS: dict[str, Any] = {}


def say(*parts: object) -> None:
    print(*parts, flush=True)


def clustered(n: int, seed: int, clusters: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(12345).standard_normal((clusters, DIM)).astype(np.float32)
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, 100_000):  # in chunks: a million at once would double the memory
        m = min(100_000, n - start)
        rows = centres[rng.integers(0, clusters, m)] + 0.5 * rng.standard_normal((m, DIM)).astype(np.float32)
        out[start : start + m] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def items(vectors: np.ndarray, start: int) -> list[NewItem]:
    return [
        NewItem(f"x{start + i}", "text", v, {"shard": (start + i) % 100, "group": (start + i) % 7})
        for i, v in enumerate(vectors)
    ]


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- PostgreSQL ----------------------------------------------------------------------------------------
def pg_server(workdir: Path) -> tuple[str, Any]:
    import pgserver

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(workdir / "pg", cleanup_mode="stop")
    return server.get_uri(), server


def pg_database(admin_url: str, name: str) -> str:
    import psycopg
    from sqlalchemy.engine import make_url

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


# --- 1. HTTP ingest ------------------------------------------------------------------------------------
def http_ingest(url: str, label: str, n_items: int, workdir: Path) -> dict[str, Any]:
    import httpx

    from benchmarks.serve_load import make_texts

    port = 18700 + len(RESULTS.get("http", {}))
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


# --- 2. ingest as the collection grows -----------------------------------------------------------------
def old_store_class(commit: str) -> Any:
    """The store this one replaced (snapshot.npz + wal.log), from git history."""
    source = subprocess.run(
        ["git", "show", f"{commit}:service/retrieval.py"], cwd=ROOT, capture_output=True, text=True
    )
    if source.returncode != 0:
        return None
    path = Path(tempfile.mkdtemp()) / "old_retrieval.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("old_retrieval", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_retrieval"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def growth(label: str, upsert: Any, vectors: np.ndarray, batch: int = 100) -> dict[str, Any]:
    n = len(vectors)
    tenth = n // 10
    rates, worst = [], 0.0
    for part in range(10):
        started = time.perf_counter()
        for start in range(part * tenth, (part + 1) * tenth, batch):
            t0 = time.perf_counter()
            upsert(start, vectors[start : start + batch])
            worst = max(worst, time.perf_counter() - t0)
        rates.append(tenth / (time.perf_counter() - started))
    say(
        f"  {label:<28} items/s per tenth: {' '.join(f'{r:,.0f}' for r in rates)}"
        f"  (slowest request {worst * 1000:.0f} ms)"
    )
    return {
        "items_per_s_by_tenth": rates,
        "first_tenth": rates[0],
        "last_tenth": rates[-1],
        "slowest_request_ms": worst * 1000,
    }


def ingest_growth(workdir: Path, n: int, commit: str) -> dict[str, Any]:
    vectors = clustered(n, seed=2)
    out: dict[str, Any] = {"n": n, "batch": 100}
    new = create_store(f"sqlite:///{workdir / 'growth.db'}", fsync=True, tuning=SearchTuning(threshold=10**9))
    new.open()
    new.create("g", DIM, "bench:v1", index="flat")
    out["embedded"] = growth("embedded (SQLite WAL)", lambda s, v: new.upsert("g", items(v, s)), vectors)
    new.close()
    old = old_store_class(commit)
    if old is None:
        say(f"  (no baseline: commit {commit} not in this repository)")
        return out
    store = old.CollectionStore(workdir / "old-collections", fsync=True)
    store.open()
    collection = store.create("g", DIM, "bench:v1")

    def old_upsert(start: int, v: np.ndarray) -> None:
        collection.upsert([old.NewItem(i.id, i.modality, i.vector, i.metadata) for i in items(v, start)])

    out["old_snapshot_wal"] = growth("old (snapshot + WAL)", old_upsert, vectors)
    store.close()
    return out


# --- 3./4. search --------------------------------------------------------------------------------------
def load(store: CollectionStore, name: str, vectors: np.ndarray, kind: str) -> float:
    store.create(name, DIM, "bench:v1", index=kind)  # type: ignore[arg-type]
    started = time.perf_counter()
    for start in range(0, len(vectors), 1000):
        store.upsert(name, items(vectors[start : start + 1000], start))
    return len(vectors) / (time.perf_counter() - started)


def timed(fn: Any, queries: np.ndarray) -> tuple[list[list[str]], list[float]]:
    results, seconds = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = fn(q)
        seconds.append(time.perf_counter() - t0)
        results.append([h.id for h in hits])
    return results, seconds


def search_figures(
    store: CollectionStore, name: str, queries: np.ndarray, exact_queries: int
) -> dict[str, Any]:
    exact_ids, exact_s = timed(lambda q: store.search(name, q, K, exact=True), queries[:exact_queries])
    ann_ids, ann_s = timed(lambda q: store.search(name, q, K), queries)
    recall = float(np.mean([len(set(a) & set(e)) / K for a, e in zip(ann_ids, exact_ids, strict=False)]))
    exact, ann = percentiles(exact_s), percentiles(ann_s)
    return {
        "exact": exact,
        "hnsw": ann,
        "recall_at_10": recall,
        "p50_speedup": exact["p50_ms"] / ann["p50_ms"],
        "ann_ready": store.ann_ready(name)["text"],
    }


def filtered(store: CollectionStore, name: str, queries: np.ndarray) -> dict[str, Any]:
    _ids, seconds = timed(lambda q: store.search(name, q, K, metadata={"shard": 7}), queries[:50])
    return {"filter": {"shard": 7}, "matching_fraction": 0.01, **percentiles(seconds)}


def bench_backend(
    label: str, url: str, sizes: list[int], queries: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    """Per N: bulk-load an `auto` collection while it is exact (threshold out of reach), then open the
    store as a restarted API would with HNSW on (threshold 1): one graph/index build, then search."""
    data = clustered(max(sizes), seed=3)
    out: dict[str, Any] = {}
    for n in sizes:
        name = f"n{n}"
        loader = create_store(url, fsync=True, max_items=2_000_000, tuning=SearchTuning(threshold=10**9))
        loader.open()
        rate = load(loader, name, data[:n], "auto")
        loader.close()
        tuning = SearchTuning(
            threshold=1,
            ef_search=args.ef_search,
            rescore=args.rescore,
            m=args.m,
            ef_construction=args.ef_construction,
        )
        store = create_store(
            url, max_items=2_000_000, tuning=tuning, maintenance_work_mem=args.pg_build_memory
        )
        started = time.perf_counter()
        store.open()
        store.wait_indexed(7200)
        build = time.perf_counter() - started
        try:
            figures = search_figures(
                store, name, queries, args.exact_queries if n >= 1_000_000 else len(queries)
            )
            figures.update({"store_ingest_items_per_s": rate, "open_and_build_s": build})
            if n == max(sizes):
                figures["filtered"] = filtered(store, name, queries)
            out[str(n)] = figures
            say(
                f"  {label:<9} N={n:>9,}  ingest {rate:>8,.0f}/s  open+build {build:6.1f} s"
                f"  exact p50 {figures['exact']['p50_ms']:8.2f} ms p99 {figures['exact']['p99_ms']:8.2f}"
                f"  HNSW p50 {figures['hnsw']['p50_ms']:6.2f} ms p99 {figures['hnsw']['p99_ms']:6.2f}"
                f"  recall@10 {figures['recall_at_10']:.3f}  x{figures['p50_speedup']:.0f}"
                f"  (ANN in use: {figures['ann_ready']})"
            )
            if "filtered" in figures:
                f = figures["filtered"]
                say(
                    f"  {label:<9} N={n:>9,}  filtered (1 % of items):"
                    f" p50 {f['p50_ms']:.2f} ms p99 {f['p99_ms']:.2f} ms"
                )
            if n != max(sizes):
                store.delete(name)
        finally:
            store.close()
    return out


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--pg-sizes", default=None, help="sizes for pgvector (default: --sizes)")
    parser.add_argument("--pg-url", default=None, help="a PostgreSQL with pgvector (default: pgserver)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-queries", type=int, default=50, help="exact queries at N >= 1M")
    parser.add_argument("--http-items", type=int, default=2000)
    parser.add_argument("--growth-size", type=int, default=400_000)
    parser.add_argument("--baseline-commit", default="75e6dbf")
    parser.add_argument("--ef-search", type=int, default=SearchTuning.ef_search)
    parser.add_argument("--rescore", type=int, default=SearchTuning.rescore)
    parser.add_argument("--m", type=int, default=SearchTuning.m)
    parser.add_argument("--ef-construction", type=int, default=SearchTuning.ef_construction)
    parser.add_argument("--pg-build-memory", default="2GB")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-retrieval.json"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    pg_sizes = [int(s) for s in (args.pg_sizes or args.sizes).split(",") if s]
    workdir = Path(tempfile.mkdtemp(prefix="momo-bench-"))
    say(
        f"retrieval benchmark in {workdir}: synthetic clustered vectors, dim {DIM}, top_k {K},"
        f" cores {os.cpu_count()}"
    )
    admin, server = (args.pg_url, None) if args.pg_url else pg_server(workdir)
    RESULTS["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    try:
        if not args.skip_http:
            say("1. HTTP ingest (momo serve, bundled model, 4 clients x 32 texts per request)")
            RESULTS["http"] = {}
            for label, url in (
                ("embedded", f"sqlite:///{workdir / 'http.db'}"),
                ("pgvector", pg_database(admin, "bench_http")),
            ):
                RESULTS["http"][label] = r = http_ingest(url, label, args.http_items, workdir)
                say(
                    f"  {label:<9} {r['items_per_s']:,.0f} items/s, {r['items']} stored,"
                    f" {r['errors']} errors,"
                    f" API peak RSS {r['api_peak_rss_mib']:.0f} MiB"
                )
        say(f"2. store ingest as a collection grows to {args.growth_size:,} (requests of 100 items, fsync)")
        RESULTS["growth"] = ingest_growth(workdir, args.growth_size, args.baseline_commit)
        queries = clustered(args.queries, seed=99)
        say(
            f"3. search (HNSW m={args.m} ef_construction={args.ef_construction}"
            f" ef_search={args.ef_search} rescore={args.rescore})"
        )
        RESULTS["embedded"] = bench_backend(
            "embedded", f"sqlite:///{workdir / 'search.db'}", sizes, queries, args
        )
        RESULTS["peak_rss_bench_process_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if pg_sizes:
            RESULTS["pgvector"] = bench_backend(
                "pgvector", pg_database(admin, "bench_search"), pg_sizes, queries, args
            )
        if max(sizes) >= 100_000:
            # the largest embedded collection is still in search.db: the API opens and indexes it
            import sqlite3

            with sqlite3.connect(workdir / "search.db") as conn:
                conn.execute(
                    "UPDATE collections SET name = 'bench', model = 'momo-tiny:v1', dim = ? WHERE name = ?",
                    (DIM, f"n{max(sizes)}"),
                )
            RESULTS["api_peak_rss_mib_on_largest_embedded"] = rss = api_rss_on(
                f"sqlite:///{workdir / 'search.db'}", workdir
            )
            say(f"5. momo serve on the embedded store of {max(sizes):,} vectors: peak RSS {rss:.0f} MiB")
    finally:
        if server is not None:
            server.cleanup()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(RESULTS, indent=2))
        say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
