"""Job records on SQLite and PostgreSQL: claims (one delivery runs a job), ownership of heartbeats
and results, cancellation, the stale-job sweep, paging, metrics queries. The schema and its
migrations: test_migrations.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from service.jobs.records import Event, Job, UploadedFile, utcnow
from service.jobs.repository import JobStore
from service.jobs.tables import EventRow, FileRow, JobRow

HOST = socket.gethostname()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    url = (
        f"sqlite:///{tmp_path / 'jobs.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    jobs = JobStore(url)
    try:
        jobs.upgrade_schema()
        yield jobs
    finally:
        jobs.close()


def _job(store: JobStore) -> str:
    return store.create_job(
        task="image_classification",
        base_model="momo-test:v1",
        dataset={"path": "x"},
        params={"hyperparameters": {"epochs": 1}},
    ).id


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claim_runs_a_job_once_and_takes_over_from_a_dead_worker(store: JobStore) -> None:
    job_id = _job(store)
    me = f"{HOST}:{os.getpid()}"
    first = store.claim(job_id, me, stale_after_s=60, max_attempts=2)
    assert first.ok and first.job is not None and first.job.state == "running" and first.job.attempts == 1
    # a duplicate delivery while the owner is alive and beating is turned away
    assert store.claim(job_id, f"{HOST}:1", stale_after_s=60, max_attempts=2).reason == "busy"
    # the owner died (a dead pid on this host): the next delivery takes over, as attempt 2
    dead = f"{HOST}:{_dead_pid()}"
    with store.session() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id).values(worker=dead))
    second = store.claim(job_id, me, stale_after_s=60, max_attempts=2)
    assert second.ok and second.job is not None and second.job.attempts == 2
    # and once its attempts are used up, a lost worker fails the job with the reason
    with store.session() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id).values(worker=dead))
    third = store.claim(job_id, me, stale_after_s=60, max_attempts=2)
    assert not third.ok and third.reason == "exhausted"
    job = store.get(job_id)
    assert job is not None and job.state == "failed" and job.error_code == "worker_lost"
    assert "attempt 2 of 2" in (job.error or "")
    assert store.claim(job_id, me, stale_after_s=60, max_attempts=5).reason == "terminal"
    assert store.claim("ftjob-none", me, stale_after_s=60, max_attempts=5).reason == "missing"


def test_only_the_owner_writes_progress_heartbeats_and_results(store: JobStore) -> None:
    job_id = _job(store)
    me, other = f"{HOST}:{os.getpid()}", "elsewhere:1"
    assert store.claim(job_id, me, stale_after_s=60, max_attempts=3).ok
    store.progress(job_id, me, 5, 10, {"loss": 1.0})
    store.progress(job_id, other, 9, 10, {"loss": 0.0})
    job = store.get(job_id)
    assert job is not None and (job.step, job.total_steps, job.progress, job.metrics) == (
        5,
        10,
        0.5,
        {"loss": 1.0},
    )
    assert store.heartbeat(job_id, me) == (True, False)
    assert store.heartbeat(job_id, other) == (False, False)
    cancelled = store.cancel(job_id)
    assert cancelled is not None and cancelled.state == "running" and cancelled.cancel_requested
    assert store.heartbeat(job_id, me) == (True, True)
    assert not store.finish(job_id, other, "succeeded", result_model="x:v9")
    assert store.finish(job_id, me, "cancelled", message="cancelled at step 5")
    job = store.get(job_id)
    assert job is not None and job.state == "cancelled" and job.result_model is None
    assert [e.message for e in store.events(job_id)][-2:] == [
        "cancellation requested; the worker stops at the next step",
        "cancelled at step 5",
    ]


def test_cancel_a_queued_job_at_once(store: JobStore) -> None:
    job_id = _job(store)
    job = store.cancel(job_id)
    assert job is not None and job.state == "cancelled" and job.finished_at is not None
    assert store.claim(job_id, "w:1", stale_after_s=60, max_attempts=3).reason == "terminal"
    assert store.cancel("ftjob-missing") is None


def test_sweep_requeues_stale_jobs_then_fails_them(store: JobStore) -> None:
    job_id = _job(store)
    assert store.claim(job_id, "far-host:1", stale_after_s=60, max_attempts=2).ok
    assert store.sweep(stale_after_s=60, max_attempts=2, requeue_after_s=600) == ([], [])  # fresh heartbeat
    with store.session() as s:
        s.execute(update(JobRow).values(heartbeat_at=utcnow() - timedelta(seconds=120)))
    assert store.sweep(stale_after_s=60, max_attempts=2, requeue_after_s=600) == ([job_id], [])
    job = store.get(job_id)
    assert job is not None and job.state == "queued" and job.worker is None and job.attempts == 1
    assert store.claim(job_id, "far-host:2", stale_after_s=60, max_attempts=2).ok
    with store.session() as s:
        s.execute(update(JobRow).values(heartbeat_at=utcnow() - timedelta(seconds=120)))
    assert store.sweep(stale_after_s=60, max_attempts=2, requeue_after_s=600) == ([], [job_id])
    job = store.get(job_id)
    assert job is not None and job.state == "failed" and "far-host:2 lost" in (job.error or "")
    # a queued job whose message went missing is sent again after requeue_after_s
    lost = _job(store)
    store.mark_sent(lost)
    with store.session() as s:
        s.execute(update(JobRow).where(JobRow.id == lost).values(sent_at=utcnow() - timedelta(seconds=700)))
    assert store.sweep(stale_after_s=60, max_attempts=2, requeue_after_s=600) == ([lost], [])
    assert store.sweep(stale_after_s=60, max_attempts=2, requeue_after_s=600) == ([], [])


def test_paging_counts_and_durations(store: JobStore) -> None:
    since = utcnow() - timedelta(seconds=1)
    ids = [_job(store) for _ in range(5)]
    page, more = store.page(2)
    assert [j.id for j in page] == ids[::-1][:2] and more
    page, more = store.page(10, after=ids[3])
    assert [j.id for j in page] == ids[:3][::-1] and not more
    with pytest.raises(KeyError):
        store.page(2, after="ftjob-unknown")
    store.cancel(ids[0])
    assert store.counts() == {"queued": 4, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 1}
    assert store.unfinished() == 4
    [(state, seconds, _)] = store.finished_since(since)
    assert state == "cancelled" and 0 <= seconds < 60
    store.delete_job(ids[1])
    assert store.get(ids[1]) is None


def test_files_round_trip(store: JobStore) -> None:
    file = UploadedFile("file-1", "pairs.jsonl", "jsonl", "uploads/file-1.jsonl", 123, "ab" * 32, utcnow())
    store.add_file(file)
    assert store.get_file("file-1") == file
    assert store.get_file("file-none") is None


def test_records_carry_every_column_of_their_rows() -> None:
    """`record()` copies a row's columns by field name: a column added to a table and not to its
    record (or the reverse) would be lost silently."""
    columns = {table: set(table.__table__.columns.keys()) for table in (JobRow, EventRow, FileRow)}
    assert {f.name for f in fields(Job)} == columns[JobRow] - {"seq"}  # seq: the list order only
    assert {f.name for f in fields(Event)} == columns[EventRow] - {"id", "job_id"}
    assert {f.name for f in fields(UploadedFile)} == columns[FileRow]
