"""The retrieval benchmark on the stores directly (no HTTP): ingest as a collection grows (against the
store it replaced, from git history), and exact / HNSW / filtered search at each size."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._retrieval.common import DIM, K, clustered, items, percentiles, say
from service.collections import CollectionStore, SearchTuning, create_store

ROOT = Path(__file__).resolve().parents[2]


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


# --- search --------------------------------------------------------------------------------------
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
