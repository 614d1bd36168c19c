"""Cancellation and worker faults with Redis and a real `momo worker` (steps slowed to 0.05 s so a job
can be caught mid-run): cancel queued / running; kill -9 of the process running a job (retried and
succeeded, or failed once its attempts are used up); kill -9 of the whole worker (the API's sweeper
requeues the job, a new worker finishes it)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from momo.store import ModelStore
from tests.service.helpers import LiveServer
from tests.service.jobs.conftest import Worker, api_with_worker, job_env, wait_for

SLOW = {"epochs": 10, "batch_size": 16, "learning_rate": 1e-3, "early_stopping_patience": 0}  # 100 steps


@pytest.fixture(scope="module")
def system(
    tmp_path_factory: pytest.TempPathFactory, module_store: Path, redis_url: str, queue: str, fashion: Path
) -> Iterator[tuple[LiveServer, Worker]]:
    data_dir = tmp_path_factory.mktemp("jobs_faults")
    env, overrides = job_env(
        store=module_store,
        data_dir=data_dir,
        broker=redis_url,
        queue=queue,
        job_step_delay_s=0.05,
        job_max_attempts=2,
        job_sweep_interval_s=3600.0,  # sweeps are run by the tests that need one
    )
    topics = data_dir / "datasets" / "topics"
    topics.mkdir(parents=True)
    shutil.copy(fashion.parent / "wordnet" / "train.jsonl", topics / "train.jsonl")
    with api_with_worker(module_store, data_dir, env, overrides) as system:
        yield system


def _submit(client: httpx.Client, **hyper: Any) -> dict[str, Any]:
    r = client.post(
        "/v1/fine-tunes",
        json={
            "task": "text_classification",
            "dataset_path": "topics/train.jsonl",
            "head": "topic",
            "hyperparameters": {**SLOW, **hyper},
        },
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def _pid(job: dict[str, Any], client: httpx.Client) -> int:
    r = client.get(f"/v1/fine-tunes/{job['id']}")
    worker = r.json()["events"]
    started = [e["message"] for e in worker if e["message"].startswith("attempt ")]
    return int(started[-1].split(" on ")[1].split()[0].rsplit(":", 1)[1])


def _running(client: httpx.Client, job_id: str, attempt: int = 1, step: int = 5) -> dict[str, Any]:
    return wait_for(
        client,
        job_id,
        ("running",),
        timeout=90,
        attempt=lambda j: j["attempts"] == attempt,
        step=lambda j: j["progress"]["step"] >= step,
    )


def _wait_for_log(worker: Worker, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in worker.tail(1_000_000):
        assert time.monotonic() < deadline, f"the worker never logged {text!r}:\n{worker.tail()}"
        time.sleep(0.2)


def _versions(system: tuple[LiveServer, Worker]) -> list[str]:
    return ModelStore(system[0].settings.model_store).versions("momo-test")


def test_cancel_queued_and_running(client: httpx.Client, system: tuple[LiveServer, Worker]) -> None:
    before = _versions(system)
    running = _submit(client)
    _running(client, running["id"])
    queued = _submit(client)  # the worker (concurrency 1, prefetch 1) is busy: this one waits
    assert queued["state"] == "queued"
    assert client.get(f"/v1/fine-tunes/{running['id']}").json()["state"] == "running"

    r = client.post(f"/v1/fine-tunes/{queued['id']}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    r = client.post(f"/v1/fine-tunes/{running['id']}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["state"] in ("running", "cancelled") and r.json()["cancel_requested"]
    done = wait_for(client, running["id"], ("cancelled", "succeeded", "failed"), timeout=30)
    assert done["state"] == "cancelled" and done["result_model"] is None
    assert done["progress"]["step"] < done["progress"]["total_steps"]
    assert any("no version registered" in e["message"] for e in done["events"])
    assert _versions(system) == before  # nothing registered

    # the queued job's message is delivered now, and turned away: it never starts
    _wait_for_log(system[1], f"job {queued['id']} not run: terminal")
    never = client.get(f"/v1/fine-tunes/{queued['id']}").json()
    assert never["state"] == "cancelled" and never["attempts"] == 0 and never["started_at"] is None
    assert client.post(f"/v1/fine-tunes/{queued['id']}/cancel").json()["state"] == "cancelled"  # idempotent


def test_kill_9_of_the_job_process_is_retried_and_succeeds(
    client: httpx.Client, system: tuple[LiveServer, Worker]
) -> None:
    job = _submit(client)
    _running(client, job["id"], step=10)
    os.kill(_pid(job, client), signal.SIGKILL)  # the prefork child that runs the training
    done = wait_for(client, job["id"], ("succeeded", "failed"), timeout=120)
    assert done["state"] == "succeeded", (done, system[1].tail())
    assert done["attempts"] == 2 and done["result_model"] is not None
    # Celery redelivered it (acks_late + reject_on_worker_lost); the sweeper is idle in this module
    assert any("retry: the previous worker" in e["message"] for e in done["events"]), done["events"]


def test_a_job_whose_workers_keep_dying_fails_with_a_reason(
    client: httpx.Client, system: tuple[LiveServer, Worker]
) -> None:
    before = _versions(system)
    job = _submit(client)
    _running(client, job["id"], attempt=1)
    os.kill(_pid(job, client), signal.SIGKILL)
    _running(client, job["id"], attempt=2)
    os.kill(_pid(job, client), signal.SIGKILL)
    done = wait_for(client, job["id"], ("succeeded", "failed"), timeout=60)
    assert done["state"] == "failed", done
    assert done["error"]["code"] == "worker_lost" and "2 of 2" in done["error"]["message"], done["error"]
    assert _versions(system) == before


def test_kill_9_of_the_whole_worker_requeues_the_job_for_the_next_worker(
    client: httpx.Client, system: tuple[LiveServer, Worker]
) -> None:
    worker = system[1]
    job = _submit(client)
    _running(client, job["id"])
    worker.kill_group(signal.SIGKILL)  # main process and its children: nothing acknowledges or rejects
    assert client.get(f"/v1/fine-tunes/{job['id']}").json()["state"] == "running"  # until a sweep
    assert system[0].services.jobs.sweep_once() == [job["id"]]  # what the API's sweeper loop runs
    requeued = client.get(f"/v1/fine-tunes/{job['id']}").json()
    assert requeued["state"] == "queued" and any("requeued" in e["message"] for e in requeued["events"])
    worker.start()
    done = wait_for(client, job["id"], ("succeeded", "failed"), timeout=120)
    assert done["state"] == "succeeded" and done["attempts"] == 2, (done, worker.tail())
