"""The micro-batcher: batching, failure isolation, back-pressure (429), dead workers (503)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.batching import BatchQueue, QueueFull, WorkerDead
from tests.service.helpers import LiveServer, assert_error, data_uri, make_settings, png_bytes


def _queue(process: Any, **kwargs: Any) -> BatchQueue:
    options = {"max_batch": 8, "max_wait_s": 0.02, "capacity": 64, **kwargs}
    queue = BatchQueue("test", process, **options)
    queue.start()
    return queue


def test_items_are_batched_and_results_come_back_in_order() -> None:
    sizes: list[int] = []

    def process(op: str, payloads: list[int]) -> list[int]:
        sizes.append(len(payloads))
        return [p * 10 for p in payloads]

    queue = _queue(process)

    async def main() -> list[list[int]]:
        return await asyncio.gather(*(queue.run("op", [i, i + 100], timeout=5) for i in range(10)))

    results = asyncio.run(main())
    assert results == [[i * 10, (i + 100) * 10] for i in range(10)]
    assert max(sizes) == 8 and sum(sizes) == 20 and len(sizes) <= 4
    queue.stop()


def test_a_failing_input_fails_only_its_own_request() -> None:
    def process(op: str, payloads: list[int]) -> list[int]:
        if -1 in payloads:
            raise ValueError("poison")
        return payloads

    queue = _queue(process)

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(queue.run("op", [i], timeout=5) for i in (1, 2, -1, 3)), return_exceptions=True
        )

    results = asyncio.run(main())
    assert results[0] == [1] and results[1] == [2] and results[3] == [3]
    assert isinstance(results[2], ValueError)
    assert queue.alive
    queue.stop()


async def _until(condition: Any, timeout: float = 10.0) -> None:
    """Poll `condition()` from the event loop (yielding to it) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def test_full_queue_raises_queue_full_and_dead_worker_raises_worker_dead() -> None:
    release = threading.Event()
    holding: list[int] = []  # the payloads the worker is processing right now

    def process(op: str, payloads: list[int]) -> list[int]:
        holding.extend(payloads)
        release.wait(10)
        holding.clear()
        return payloads

    queue = _queue(process, max_batch=1, capacity=2, max_wait_s=0)

    async def main() -> None:
        first = asyncio.ensure_future(queue.run("op", [0], timeout=10))
        await _until(lambda: holding == [0])  # the worker holds item 0; the queue is empty
        pending = queue.submit_many("op", [1, 2])
        with pytest.raises(QueueFull) as excinfo:
            queue.submit_many("op", [3])
        assert excinfo.value.retry_after_s >= 1
        release.set()
        assert await first == [0]
        assert [await f for f in pending] == [1, 2]

    asyncio.run(main())
    release.clear()

    async def killed() -> None:
        blocked = asyncio.ensure_future(queue.run("op", [5], timeout=10))
        await _until(lambda: holding == [5])
        waiting = asyncio.ensure_future(queue.run("op", [6], timeout=10))
        await _until(lambda: queue.depth == 1)
        killer = threading.Thread(target=queue.kill_for_test)
        killer.start()  # the fault is raised when the worker next looks at the queue
        release.set()
        results = await asyncio.gather(blocked, waiting, return_exceptions=True)
        killer.join(10)
        assert results[0] == [5]  # the batch in the runtime finished
        assert isinstance(results[1], WorkerDead)  # the queued one failed: nothing hangs
        with pytest.raises(WorkerDead):
            queue.submit_many("op", [7])

    asyncio.run(killed())
    assert not queue.alive


def test_overload_gives_429_with_retry_after(model_store: Path, tmp_path: Path) -> None:
    settings = make_settings(model_store, tmp_path, queue_size=4, max_batch=1)
    with LiveServer(settings) as live:
        handle = live.engine.current
        original = handle.runtime.encode_texts
        release = threading.Event()

        def blocked(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            release.wait(30)  # the runtime is stuck until the queue has filled up
            return original(ids, mask)

        handle.runtime.encode_texts = blocked

        def call(i: int) -> httpx.Response:
            with live.client() as c:
                return c.post("/v1/embeddings", json={"input": f"text {i}"})

        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(call, i) for i in range(12)]
            deadline = time.monotonic() + 30
            # 1 in the runtime + 4 queued; the other 7 are refused at once
            while sum(f.done() for f in futures) < 7:
                assert time.monotonic() < deadline, "the queue never filled"
                time.sleep(0.01)
            release.set()
            responses = [f.result() for f in futures]
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] * 5 + [429] * 7, statuses
        limited = [r for r in responses if r.status_code == 429]
        assert_error(limited[0], 429, "queue_full")
        assert int(limited[0].headers["retry-after"]) >= 1
        handle.runtime.encode_texts = original
        with live.client() as c:
            assert c.post("/v1/embeddings", json={"input": "after"}).status_code == 200
            metrics = c.get("/metrics").text
        assert f'momo_queue_rejections_total{{queue="text"}} {len(limited)}.0' in metrics
        assert 'momo_http_requests_total{method="POST",route="/v1/embeddings",status="429"}' in metrics


def test_a_killed_worker_fails_ready_and_requests_get_503(model_store: Path, tmp_path: Path) -> None:
    with LiveServer(make_settings(model_store, tmp_path)) as live, live.client() as c:
        assert c.get("/ready").status_code == 200
        assert c.post("/internal/test/kill-worker/text").json() == {"killed": "text"}
        ready = c.get("/ready")
        assert ready.status_code == 503 and "text" in ready.json()["reason"]
        assert_error(ready, 503, "not_ready")
        r = c.post("/v1/embeddings", json={"input": "hello"})
        error = assert_error(r, 503, "worker_unavailable")
        assert "retry-after" in r.headers
        assert "Fault" not in error["message"] and "hook" not in error["message"]  # the log has why
        # the other queues still serve
        assert c.post("/v1/embeddings", json={"input": [data_uri(png_bytes())]}).status_code == 200
        assert 'momo_worker_alive{queue="text"} 0.0' in c.get("/metrics").text


def test_a_runtime_failure_is_a_500_in_the_error_shape_and_the_service_recovers(
    model_store: Path, tmp_path: Path
) -> None:
    with LiveServer(make_settings(model_store, tmp_path)) as live, live.client() as c:
        handle = live.engine.current
        original = handle.runtime.encode_texts

        def broken(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            raise RuntimeError("simulated runtime fault")

        handle.runtime.encode_texts = broken
        r = c.post("/v1/embeddings", json={"input": "x"}, headers={"X-Request-ID": "boom-1"})
        error = assert_error(r, 500, "internal_error")
        assert error["type"] == "server_error" and "simulated" not in error["message"]
        assert r.headers["x-request-id"] == "boom-1"
        handle.runtime.encode_texts = original
        assert c.get("/ready").status_code == 200
        assert c.post("/v1/embeddings", json={"input": "x"}).status_code == 200


# --- the pipelined stages (pre -> core -> post) ------------------------------------------------------
def _text_queue(seen: list[list[int]], **kwargs: Any) -> BatchQueue:
    """A queue shaped like the service's text queue: strings are 'tokenised' (one id per character) in
    the pre stage, padded in collate, and the model returns each row's sum with its length."""

    def prepare(op: str, texts: list[str]) -> list[Any]:
        return [
            ValueError(f"bad {t}") if t.startswith("bad") else np.array([ord(c) for c in t]) for t in texts
        ]

    def collate(op: str, rows: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(rows), max(len(r) for r in rows)), dtype=np.int64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def process(op: str, batch: np.ndarray) -> list[tuple[int, int]]:
        seen.append([int(batch.shape[0]), int(batch.shape[1])])
        if (batch == ord("!")).any():
            raise RuntimeError("the model cannot read '!'")
        return [(int(row.sum()), int(batch.shape[1])) for row in batch]

    options = {"max_batch": 16, "max_wait_s": 0.0, "capacity": 4096, **kwargs}
    queue = BatchQueue("text", process, prepare=prepare, collate=collate, cost=len, **options)
    queue.start()
    return queue


def test_pipelined_queue_loses_and_mixes_up_nothing_under_concurrency() -> None:
    rng = np.random.default_rng(17)
    texts = [
        "".join(chr(97 + int(c)) for c in rng.integers(0, 26, size=int(n))) for n in rng.integers(1, 40, 600)
    ]
    seen: list[list[int]] = []
    queue = _text_queue(seen, max_batch_tokens=128)

    async def client(k: int) -> list[list[int]]:
        got = []
        for j in range(k, len(texts), 24):  # 24 clients, each sends its share one or three at a time
            chunk = texts[j : j + (3 if j % 2 else 1)]
            got.append([r[0] for r in await queue.run("op", chunk, timeout=30)])
            await asyncio.sleep(0)
        return got

    async def main() -> list[list[list[int]]]:
        return await asyncio.gather(*(client(k) for k in range(24)))

    results = asyncio.run(main())
    for k, got in enumerate(results):
        starts = list(range(k, len(texts), 24))
        for j, sums in zip(starts, got, strict=True):
            chunk = texts[j : j + (3 if j % 2 else 1)]
            assert sums == [sum(ord(c) for c in t) for t in chunk]
    sent = sum(len(texts[j : j + (3 if j % 2 else 1)]) for k in range(24) for j in range(k, len(texts), 24))
    assert sum(rows for rows, _ in seen) == sent  # every item ran exactly once
    assert max(rows for rows, _ in seen) > 1  # batches formed
    for rows, length in seen:  # the token budget holds, except for an item alone over it
        assert rows * length <= 128 or rows == 1
    queue.stop()


def test_length_sorted_grouping_keeps_one_long_text_from_padding_short_ones() -> None:
    seen: list[list[int]] = []
    release = threading.Event()
    blocker_seen = threading.Event()

    def gate(op: str, payloads: list[str]) -> list[Any]:
        if payloads == ["block"]:
            blocker_seen.set()
            release.wait(10)
        return [np.array([1] * len(t)) for t in payloads]

    queue = _text_queue(seen, max_batch=8, max_batch_tokens=64)
    queue._prepare = gate

    async def main() -> None:
        first = asyncio.ensure_future(queue.run("op", ["block"], timeout=10))
        await _until(blocker_seen.is_set)
        # while pre is held, one long text and fifteen short ones queue up
        pending = [asyncio.ensure_future(queue.run("op", ["x" * 60], timeout=10))]
        pending += [asyncio.ensure_future(queue.run("op", ["ab"], timeout=10)) for _ in range(15)]
        await asyncio.sleep(0)
        release.set()
        await first
        await asyncio.gather(*pending)

    asyncio.run(main())
    queue.stop()
    assert [1, 60] in seen  # the long text went alone
    assert all(length <= 5 for rows, length in seen if [rows, length] != [1, 60])  # nothing padded to 60
    assert sum(rows for rows, _ in seen) == 17


def test_pipelined_failures_stay_with_their_own_request() -> None:
    """A text that fails in the pre stage, or that the model refuses inside a batch, fails only the
    request that sent it; the others in the same batch get their results."""
    seen: list[list[int]] = []
    queue = _text_queue(seen, max_batch=32, max_wait_s=0.05)

    async def main() -> list[Any]:
        requests = [["fine", "also"], ["bad one"], ["ok!"], ["good"], ["more", "bad two"]]
        return await asyncio.gather(
            *(queue.run("op", r, timeout=10) for r in requests), return_exceptions=True
        )

    results = asyncio.run(main())
    assert [r[0] for r in results[0]] == [sum(map(ord, "fine")), sum(map(ord, "also"))]
    assert isinstance(results[1], ValueError) and "bad one" in str(results[1])
    assert isinstance(results[2], RuntimeError)  # the model refused it (retried alone)
    assert results[3][0][0] == sum(map(ord, "good"))
    assert isinstance(results[4], ValueError)
    assert queue.alive
    queue.stop()


def test_a_request_past_its_timeout_gets_timeout_error_and_the_queue_goes_on() -> None:
    release = threading.Event()

    def process(op: str, payloads: list[int]) -> list[int]:
        if 0 in payloads:
            release.wait(10)
        return payloads

    queue = _queue(process, max_wait_s=0)

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await queue.run("op", [0], timeout=0.05)
        with pytest.raises(TimeoutError):
            await queue.run("op", [0, 0], timeout=0.05, return_exceptions=True)
        release.set()
        assert await queue.run("op", [1, 2], timeout=5) == [1, 2]

    asyncio.run(main())
    assert queue.alive
    queue.stop()
