"""What a failed fine-tune tells its client: a stable code and a message without exception text or
server paths; the detail goes to the worker's log. (`run_job` in this process: no broker needed.)"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.celery_tasks import run_job
from service.jobs.repository import JobStore
from service.jobs.schemas import FineTuneJob
from service.jobs.settings import JobSettings


@pytest.fixture()
def jobs(tmp_path: Path, base_store: Path) -> Iterator[tuple[JobSettings, JobStore]]:
    settings = JobSettings(
        model_store=base_store, data_dir=tmp_path / "data", job_export_onnx=False, job_threads=1
    )
    root = settings.resolved_data_root
    root.mkdir(parents=True)
    (root / "texts.jsonl").write_text(
        "".join(f'{{"text": "text {i}", "label": "{"ab"[i % 2]}"}}\n' for i in range(8))
    )
    (root / "broken.jsonl").write_text('{"text": "fine", "label": "a"}\n{"text": \n')
    store = JobStore(settings.resolved_database_url)
    store.upgrade_schema()
    yield settings, store
    store.close()


@pytest.fixture()
def worker_log() -> Iterator[io.StringIO]:
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    logger = logging.getLogger("momo.jobs.worker")
    logger.addHandler(handler)
    yield captured
    logger.removeHandler(handler)


def _run(jobs: tuple[JobSettings, JobStore], **job: Any) -> FineTuneJob:
    settings, store = jobs
    spec = {"task": "text_classification", "base_model": "momo-test:v1", "dataset": {"path": "texts.jsonl"}}
    spec.update(job)
    spec.setdefault("params", {"hyperparameters": {"epochs": 1, "batch_size": 4}})
    record = store.create_job(**spec)
    run_job(record.id, settings)
    done = store.get(record.id)
    assert done is not None and done.state == "failed", done
    return FineTuneJob.of(done)


def _no_server_paths(message: str, settings: JobSettings) -> None:
    for root in (settings.resolved_data_root, settings.model_store.absolute(), settings.data_dir.absolute()):
        assert str(root) not in message and str(root.resolve()) not in message, message


def test_an_unexpected_failure_is_a_stable_error_with_the_detail_in_the_log(
    jobs: tuple[JobSettings, JobStore], worker_log: io.StringIO
) -> None:
    job = _run(jobs, params={"hyperparameters": {"epochs": 1, "secret_option": "/srv/private/x"}})
    assert job.error is not None and job.error.code == "internal_error"
    assert "secret_option" not in job.error.message and "/srv/private" not in job.error.message
    assert "Error" not in job.error.message  # no exception type name either
    assert job.id in job.error.message  # what to look for in the worker log
    assert "secret_option" in worker_log.getvalue()


def test_a_malformed_dataset_is_named_relative_to_the_data_root(jobs: tuple[JobSettings, JobStore]) -> None:
    job = _run(jobs, dataset={"path": "broken.jsonl"})
    assert job.error is not None and job.error.code == "invalid_dataset"
    assert job.error.message.startswith("invalid dataset: broken.jsonl:2: invalid JSON"), job.error.message
    _no_server_paths(job.error.message, jobs[0])


def test_a_missing_base_model_names_no_store_path(jobs: tuple[JobSettings, JobStore]) -> None:
    job = _run(jobs, base_model="ghost:v1")
    assert job.error is not None and job.error.code == "invalid_job"
    assert "ghost" in job.error.message
    _no_server_paths(job.error.message, jobs[0])
