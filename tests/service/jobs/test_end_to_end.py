"""End to end over HTTP with Redis and a real `momo worker` process: upload an image folder, fine-tune,
activate the new version, and its head beats the base model on held-out images; a malformed dataset
fails with a message naming file and line; job metrics."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.helpers import LiveServer
from tests.service.jobs.conftest import Worker, api_with_worker, job_env, wait_for, zip_folder


@pytest.fixture(scope="module")
def system(
    tmp_path_factory: pytest.TempPathFactory, module_store: Path, redis_url: str, queue: str
) -> Iterator[tuple[LiveServer, Worker]]:
    data_dir = tmp_path_factory.mktemp("jobs_e2e")
    env, overrides = job_env(store=module_store, data_dir=data_dir, broker=redis_url, queue=queue)
    with api_with_worker(module_store, data_dir, env, overrides) as system:
        yield system


def _held_out(fashion: Path, per_class: int = 5) -> list[tuple[str, str]]:
    """(label, base64 png) from the validation split, which training never sees."""
    items = []
    for class_dir in sorted((fashion / "val/images").iterdir()):
        for path in sorted(class_dir.glob("*.png"))[:per_class]:
            items.append((class_dir.name, base64.b64encode(path.read_bytes()).decode()))
    return items


def _accuracy(client: httpx.Client, items: list[tuple[str, str]], **request: Any) -> float:
    r = client.post("/v1/classify", json={"input": [{"image": b64} for _, b64 in items], **request})
    assert r.status_code == 200, r.text
    predicted = [row["labels"][0]["label"] for row in r.json()["data"]]
    return float(np.mean([p == label for p, (label, _) in zip(predicted, items, strict=True)]))


def test_fine_tune_an_uploaded_image_folder_and_serve_its_head(
    client: httpx.Client, fashion: Path, system: tuple[LiveServer, Worker]
) -> None:
    t0 = time.perf_counter()
    archive = zip_folder(fashion / "train/images", "my_fashion")
    r = client.post("/v1/files", files={"file": ("fashion.zip", archive, "application/zip")})
    assert r.status_code == 200, r.text
    upload = r.json()
    assert upload["id"].startswith("file-") and upload["kind"] == "zip" and upload["bytes"] == len(archive)
    assert upload["dataset_path"] == f"uploads/{upload['id']}/my_fashion"  # the wrapping folder is skipped
    assert client.get(f"/v1/files/{upload['id']}").json()["sha256"] == upload["sha256"]

    held_out = _held_out(fashion)
    labels = sorted({label for label, _ in held_out})
    before = _accuracy(client, held_out, labels=[label.replace("_", " ") for label in labels])

    r = client.post(
        "/v1/fine-tunes",
        json={
            "task": "image_classification",
            "model": "momo-test",
            "training_file": upload["id"],
            "head": "fashion",
            "hyperparameters": {"epochs": 12, "learning_rate": 1e-3, "validation_split": 0.2},
        },
    )
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["state"] in ("queued", "running") and job["model"] == "momo-test:v1"
    assert job["dataset"] == {"file_id": upload["id"], "path": upload["dataset_path"]}
    submitted = time.perf_counter()
    job = wait_for(client, job["id"], ("succeeded", "failed"), timeout=180)
    trained = time.perf_counter()
    assert job["state"] == "succeeded", (job, system[1].tail())
    assert job["result_model"] == "momo-test:v2" and job["attempts"] == 1 and job["error"] is None
    metrics = job["metrics"]
    assert job["progress"]["fraction"] == 1.0 and job["progress"]["step"] == metrics["steps"]
    assert metrics["steps"] == job["progress"]["total_steps"] or metrics["stopped_early"]
    assert metrics["metric"] == "accuracy" and metrics["after"] > metrics["before"]
    messages = [e["message"] for e in job["events"]]
    assert messages[0] == "job created" and any("registered momo-test:v2" in m for m in messages)

    # the new version is listed (not yet serving), with its head and parent
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    new = models["momo-test:v2"]
    assert new["parent"] == "momo-test:v1" and new["heads"]["fashion"]["num_labels"] == 10
    assert not new["serving"] and models["momo-test:v1"]["serving"]
    r = client.post("/v1/models/momo-test:v2/activate")
    assert r.status_code == 200, r.text
    after = _accuracy(client, held_out, head="fashion")
    chance = 1 / len(labels)
    print(
        f"\nupload+submit {submitted - t0:.1f} s, train+register {trained - submitted:.1f} s; "
        f"held-out accuracy: base zero-shot {before:.2f} (chance {chance:.2f}) -> "
        f"fine-tuned head {after:.2f}; "
        f"validation split {metrics['before']:.2f} -> {metrics['after']:.2f}"
    )
    assert after > max(before, chance) + 0.1

    listing = client.get("/v1/fine-tunes").json()
    assert listing["data"][0]["id"] == job["id"] and listing["data"][0]["events"] is None
    wanted = (
        'momo_fine_tune_jobs{state="succeeded"} 1.0',
        'momo_fine_tune_duration_seconds_count{state="succeeded"} 1.0',
    )
    deadline = time.monotonic() + 10  # the sweeper refreshes job metrics every second here
    while not all(w in (text := client.get("/metrics").text) for w in wanted):
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.5)


def test_malformed_dataset_fails_naming_file_and_line(client: httpx.Client) -> None:
    lines = [
        json.dumps({"text": "a fine day", "label": "weather"}),
        json.dumps({"text": "stocks fell", "label": "news"}),
        '{"text": "rain again", "label": ',
    ]
    r = client.post(
        "/v1/files", files={"file": ("topics.jsonl", ("\n".join(lines) + "\n").encode(), "application/jsonl")}
    )
    assert r.status_code == 200, r.text
    file = r.json()
    r = client.post("/v1/fine-tunes", json={"task": "text_classification", "training_file": file["id"]})
    assert r.status_code == 200, r.text
    job = wait_for(client, r.json()["id"], ("succeeded", "failed"), timeout=60)
    assert job["state"] == "failed" and job["result_model"] is None
    assert job["error"]["code"] == "invalid_dataset"
    assert "topics.jsonl:3: invalid JSON" in job["error"]["message"], job["error"]
    assert job["events"][-1]["level"] == "error"


def test_jobs_page_newest_first(client: httpx.Client) -> None:
    everything = client.get("/v1/fine-tunes", params={"limit": 100}).json()["data"]
    assert len(everything) >= 2
    first = client.get("/v1/fine-tunes", params={"limit": 1}).json()
    assert first["has_more"] and first["data"][0]["id"] == everything[0]["id"]
    second = client.get("/v1/fine-tunes", params={"limit": 1, "after": first["data"][0]["id"]}).json()
    assert second["data"][0]["id"] == everything[1]["id"]
    assert client.get("/v1/fine-tunes", params={"after": "ftjob-nope"}).status_code == 400
    assert client.get("/v1/fine-tunes/ftjob-000000000000000000000000").status_code == 404
