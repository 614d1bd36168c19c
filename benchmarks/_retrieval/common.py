"""What every part of the retrieval benchmark shares: the vector size, top-k, SYNTHETIC clustered unit
vectors (1,000 Gaussian clusters) as collection items, latency percentiles and flushed printing."""

from __future__ import annotations

import numpy as np

from service.collections import NewItem

DIM = 128
K = 10


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
