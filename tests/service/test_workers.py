"""`momo serve --workers N`: several API processes on one port, each with the model loaded once;
/ready, metrics and hot swap across them; a worker whose inference thread dies is replaced."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from service.server import plan_workers
from tests.service.helpers import API_KEY, ServeProcess, make_settings

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def _fresh_ready(url: str) -> dict[str, object]:
    """/ready over a new connection (the kernel hands each new connection to one of the workers)."""
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.get("/ready")
        body: dict[str, object] = r.json()
        body["http_status"] = r.status_code
        return body


def _until_every_worker(url: str, workers: int, check: object, timeout: float = 90.0) -> set[int]:
    """Open new connections until `workers` distinct processes have answered /ready with `check`
    true and none since has answered otherwise; returns their pids."""
    good: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = _fresh_ready(url)
        pid = int(body.get("pid") or 0)
        if check(body):  # type: ignore[operator]
            good.add(pid)
            if len(good) >= workers:
                return good
        else:
            good.discard(pid)
            time.sleep(0.05)
    raise AssertionError(f"not every worker got there in {timeout:.0f}s: {good}, last {body}")


def test_plan_workers_from_the_core_count(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("service.server.cpu_count", lambda: 4)
    assert plan_workers(make_settings(model_store, tmp_path, device="cpu")) == (4, 1)
    assert plan_workers(make_settings(model_store, tmp_path, device="cpu", workers=2)) == (2, 2)
    assert plan_workers(make_settings(model_store, tmp_path, device="cpu", workers=2, threads=3)) == (2, 3)
    assert plan_workers(make_settings(model_store, tmp_path, device="cpu", workers=1)) == (1, None)
    assert plan_workers(make_settings(model_store, tmp_path, device="cuda")) == (1, None)
    monkeypatch.setattr("service.server.cpu_count", lambda: 32)
    assert plan_workers(make_settings(model_store, tmp_path, device="cpu")) == (8, 4)


@pytest.mark.slow
def test_workers_share_the_port_metrics_add_up_and_a_hot_swap_reaches_every_worker(
    model_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(model_store, store)  # this test moves the active pointer
    serve = ServeProcess(
        store, tmp_path / "data", tmp_path / "serve.log", workers=2, model_follow_s=0.2, test_hooks=True
    )
    with serve:
        pids = _until_every_worker(serve.url, 2, lambda b: b["model"] == "momo-test:v1")
        assert len(pids) == 2
        with serve.client() as c:
            r = c.post("/v1/models/momo-test:v2/activate")
            assert r.status_code == 200, r.text
        pids = _until_every_worker(serve.url, 2, lambda b: b["model"] == "momo-test:v2")
        # every worker serves v2 and embeds with it
        for _ in range(6):
            with httpx.Client(base_url=serve.url, headers=HEADERS, timeout=30) as c:
                r = c.post("/v1/embeddings", json={"input": "swap"})
                assert r.status_code == 200 and r.json()["model"] == "momo-test:v2"
        # metrics from whichever worker answers count the requests of all of them
        with httpx.Client(base_url=serve.url, headers=HEADERS, timeout=30) as c:
            before = _count(c.get("/metrics").text, "/v1/embeddings")
        for _ in range(10):
            with httpx.Client(base_url=serve.url, headers=HEADERS, timeout=30) as c:
                assert c.post("/v1/embeddings", json={"input": "count me"}).status_code == 200
        with httpx.Client(base_url=serve.url, headers=HEADERS, timeout=30) as c:
            text = c.get("/metrics").text
        assert _count(text, "/v1/embeddings") == before + 10
        assert (
            len(set(re.findall(r'momo_model_info\{[^}]*pid="(\d+)"[^}]*version="v2"[^}]*\} 1\.0', text))) == 2
        )

        # a worker whose inference thread dies exits; the supervisor starts a fresh one
        with httpx.Client(base_url=serve.url, headers=HEADERS, timeout=30) as c:
            killed = int(c.get("/ready").json()["pid"])
            assert c.post("/internal/test/kill-worker/text").status_code == 200
        deadline = time.monotonic() + 90
        while True:
            now = _until_every_worker(serve.url, 2, lambda b: b["http_status"] == 200)
            if killed not in now:
                break
            assert time.monotonic() < deadline, "the dead worker was not replaced"
        assert len(now) == 2


def _count(metrics: str, route: str) -> float:
    pattern = (
        rf'momo_http_requests_total\{{method="POST",route="{re.escape(route)}",status="200"\}} ([0-9.e+]+)'
    )
    return sum(float(v) for v in re.findall(pattern, metrics))
