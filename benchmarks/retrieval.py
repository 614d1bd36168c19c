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
import json
import os
import resource
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._retrieval.common import DIM, K, clustered, say  # noqa: E402
from benchmarks._retrieval.http import api_rss_on, http_ingest  # noqa: E402
from benchmarks._retrieval.stores import bench_backend, ingest_growth  # noqa: E402
from service.collections import SearchTuning  # noqa: E402

RESULTS: dict[str, Any] = {}


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
                port = 18700 + len(RESULTS["http"])
                RESULTS["http"][label] = r = http_ingest(url, label, args.http_items, workdir, port)
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
