"""The one-command path: no Redis, no external worker. The embedded broker (kombu SQLAlchemy transport
on SQLite) and the `momo worker` subprocess the API starts at the first job: upload, fine-tune,
activate, classify with the new head; the worker stops with the API."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import numpy as np
import pytest

from tests.service.helpers import COLORS, LiveServer, colors_zip, make_settings, noisy_color_png


def test_embedded_broker_and_worker(tmp_path: Path, base_store: Path) -> None:
    data_dir = tmp_path / "service"
    settings = make_settings(
        base_store,
        data_dir,
        job_threads=1,
        job_export_onnx=False,
        job_heartbeat_s=0.5,
        job_sweep_interval_s=1.0,
    )
    assert settings.embedded_broker and settings.job_worker == "auto"
    rng = np.random.default_rng(99)
    held_out = [
        (label, base64.b64encode(noisy_color_png(color, rng)).decode()) for label, color in COLORS.items()
    ] * 4
    with LiveServer(settings) as server, server.client() as client:
        jobs = server.services.jobs
        assert jobs.worker is not None and not jobs.worker.alive()  # started at the first job only
        r = client.post("/v1/files", files={"file": ("colors.zip", colors_zip(24, 0), "application/zip")})
        assert r.status_code == 200, r.text
        inputs = [{"image": b64} for _, b64 in held_out]
        zero_shot = client.post("/v1/classify", json={"input": inputs, "labels": list(COLORS)}).json()
        before = np.mean(
            [
                row["labels"][0]["label"] == lbl
                for row, (lbl, _) in zip(zero_shot["data"], held_out, strict=True)
            ]
        )

        t0 = time.perf_counter()
        r = client.post(
            "/v1/fine-tunes",
            json={
                "task": "image_classification",
                "training_file": r.json()["id"],
                "head": "color",
                "hyperparameters": {"epochs": 8, "batch_size": 16, "learning_rate": 1e-3},
            },
        )
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
        assert jobs.worker.alive()
        pid = jobs.worker.pid
        deadline = time.monotonic() + 150
        while (job := client.get(f"/v1/fine-tunes/{job_id}").json())["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.3)
        elapsed = time.perf_counter() - t0
        assert job["state"] == "succeeded", job
        assert "momo-test:v2" in {m["id"] for m in client.get("/v1/models").json()["data"]}
        assert client.post("/v1/models/momo-test:v2/activate").status_code == 200
        answered = client.post("/v1/classify", json={"input": inputs, "head": "color"}).json()
        after = np.mean(
            [
                row["labels"][0]["label"] == lbl
                for row, (lbl, _) in zip(answered["data"], held_out, strict=True)
            ]
        )
        print(
            f"\nembedded broker: submit -> succeeded in {elapsed:.1f} s (worker start included); "
            f"held-out accuracy {before:.2f} (zero-shot) -> {after:.2f} (head)"
        )
        assert after > before and after >= 0.9
        assert (data_dir / "broker.sqlite").is_file() and (data_dir / "jobs.db").is_file()
    with pytest.raises(ProcessLookupError):  # stopped with the API
        import os

        os.kill(pid or -1, 0)
