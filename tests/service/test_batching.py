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
