"""The job database's Alembic migrations on SQLite and PostgreSQL: a database written before Alembic
is taken over with its rows, a fresh one is created at head, the migrated schema is exactly the ORM
tables (a table change without a migration fails here), concurrent upgrades, refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from service.jobs.database import MIGRATIONS, VERSION_TABLE, SchemaMismatch
from service.jobs.repository import JobStore
from service.jobs.tables import Base
from service.schema_migrations import alembic_config

# The DDL SQLAlchemy's `create_all` emitted for the pre-Alembic tables (schema version 1), captured
# from that code on each dialect and frozen here: the databases out there look exactly like this.
OLD_JOB_TABLES = """
CREATE TABLE fine_tune_jobs (
    seq {serial} NOT NULL,
    id VARCHAR(64) NOT NULL,
    task VARCHAR(32) NOT NULL,
    base_model VARCHAR(200) NOT NULL,
    dataset JSON NOT NULL,
    params JSON NOT NULL,
    state VARCHAR(16) NOT NULL,
    step INTEGER NOT NULL,
    total_steps INTEGER,
    progress FLOAT NOT NULL,
    metrics JSON NOT NULL,
    result_model VARCHAR(200),
    error TEXT,
    error_code VARCHAR(64),
    attempts INTEGER NOT NULL,
    cancel_requested BOOLEAN NOT NULL,
    worker VARCHAR(200),
    created_at {timestamp} NOT NULL,
    updated_at {timestamp} NOT NULL,
    sent_at {timestamp},
    started_at {timestamp},
    heartbeat_at {timestamp},
    finished_at {timestamp},
    PRIMARY KEY (seq)
);
CREATE UNIQUE INDEX ix_fine_tune_jobs_id ON fine_tune_jobs (id);
CREATE INDEX ix_fine_tune_jobs_finished_at ON fine_tune_jobs (finished_at);
CREATE INDEX ix_fine_tune_jobs_state ON fine_tune_jobs (state);
CREATE TABLE uploaded_files (
    id VARCHAR(64) NOT NULL,
    filename VARCHAR(255) NOT NULL,
    kind VARCHAR(32) NOT NULL,
    path TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 VARCHAR(64) NOT NULL,
    created_at {timestamp} NOT NULL,
    PRIMARY KEY (id)
);
CREATE TABLE fine_tune_events (
    id {serial} NOT NULL,
    job_id VARCHAR(64) NOT NULL,
    created_at {timestamp} NOT NULL,
    level VARCHAR(16) NOT NULL,
    message TEXT NOT NULL,
    data JSON,
    PRIMARY KEY (id),
    FOREIGN KEY(job_id) REFERENCES fine_tune_jobs (id) ON DELETE CASCADE
);
CREATE INDEX ix_fine_tune_events_job_id ON fine_tune_events (job_id);
CREATE TABLE schema_version (
    id {serial} NOT NULL,
    version INTEGER NOT NULL,
    written_at {timestamp} NOT NULL,
    PRIMARY KEY (id)
);
INSERT INTO schema_version (id, version, written_at) VALUES (1, {version}, '2025-03-01 09:00:00.000000');
"""
OLD_TYPES = {
    "sqlite": {"serial": "INTEGER", "timestamp": "DATETIME"},
    "postgresql": {"serial": "SERIAL", "timestamp": "TIMESTAMP WITHOUT TIME ZONE"},
}
# rows as the old code wrote them (no explicit seq / event id: the database numbered them)
OLD_ROWS = """
INSERT INTO fine_tune_jobs (id, task, base_model, dataset, params, state, step, total_steps, progress,
    metrics, result_model, error, error_code, attempts, cancel_requested, worker, created_at,
    updated_at, sent_at, started_at, heartbeat_at, finished_at)
VALUES ('ftjob-old-done', 'image_classification', 'momo-test:v1', '{"path": "fashion/train"}',
    '{"hyperparameters": {"epochs": 1}, "head": null, "output_name": null}', 'succeeded', 40, 40, 1.0,
    '{"val_accuracy": 0.75}', 'momo-test:v2', NULL, NULL, 1, FALSE, 'old-host:41',
    '2025-03-01 10:00:00.000000', '2025-03-01 10:05:00.000000', '2025-03-01 10:00:00.500000',
    '2025-03-01 10:00:01.000000', '2025-03-01 10:04:59.000000', '2025-03-01 10:05:00.000000');
INSERT INTO fine_tune_jobs (id, task, base_model, dataset, params, state, step, total_steps, progress,
    metrics, result_model, error, error_code, attempts, cancel_requested, worker, created_at,
    updated_at, sent_at, started_at, heartbeat_at, finished_at)
VALUES ('ftjob-old-queued', 'text_classification', 'momo-test:v1', '{"file_id": "file-old"}',
    '{"hyperparameters": {}}', 'queued', 0, NULL, 0.0, '{}', NULL, NULL, NULL, 0, FALSE, NULL,
    '2025-03-01 11:00:00.000000', '2025-03-01 11:00:00.000000', NULL, NULL, NULL, NULL);
INSERT INTO fine_tune_events (job_id, created_at, level, message, data)
VALUES ('ftjob-old-done', '2025-03-01 10:00:00.000000', 'info', 'job created', NULL);
INSERT INTO fine_tune_events (job_id, created_at, level, message, data)
VALUES ('ftjob-old-done', '2025-03-01 10:05:00.000000', 'info', 'succeeded', '{"steps": 40}');
INSERT INTO fine_tune_events (job_id, created_at, level, message, data)
VALUES ('ftjob-old-queued', '2025-03-01 11:00:00.000000', 'info', 'job created', NULL);
INSERT INTO uploaded_files (id, filename, kind, path, bytes, sha256, created_at)
VALUES ('file-old', 'reviews.jsonl', 'jsonl', 'uploads/file-old.jsonl', 2048, '{sha}',
    '2025-03-01 10:59:00.000000');
""".replace("{sha}", "0f" * 32)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return str(request.getfixturevalue("postgres_url"))


def _execute_script(url: str, script: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in filter(str.strip, script.split(";\n")):
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def _create_old_database(url: str, *, version: int = 1) -> None:
    dialect = "postgresql" if url.startswith("postgresql") else "sqlite"
    _execute_script(url, OLD_JOB_TABLES.format(version=version, **OLD_TYPES[dialect]))
    _execute_script(url, OLD_ROWS)


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _revision_and_drift(store: JobStore) -> tuple[str | None, list[object]]:
    """The database's revision and how its schema differs from the ORM tables (autogenerate's diff)."""
    with store.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "compare_type": True}
        )
        return context.get_current_revision(), compare_metadata(context, Base.metadata)


def _head() -> str | None:
    return ScriptDirectory.from_config(alembic_config(MIGRATIONS, VERSION_TABLE)).get_current_head()


def test_a_database_written_before_alembic_is_taken_over_with_its_rows(url: str) -> None:
    _create_old_database(url)
    store = JobStore(url)
    try:
        store.upgrade_schema()
        store.upgrade_schema()  # at head: nothing to do
        assert _revision_and_drift(store) == (_head(), [])
        assert "schema_version" not in _tables(url)  # the old marker went with the take-over
        done = store.get("ftjob-old-done")
        assert done is not None and done.terminal
        assert (done.state, done.step, done.progress, done.result_model) == (
            "succeeded",
            40,
            1.0,
            "momo-test:v2",
        )
        assert done.dataset == {"path": "fashion/train"} and done.metrics == {"val_accuracy": 0.75}
        assert done.params == {"hyperparameters": {"epochs": 1}, "head": None, "output_name": None}
        assert done.cancel_requested is False and done.worker == "old-host:41"
        assert done.started_at == datetime(2025, 3, 1, 10, 0, 1)
        assert done.finished_at == datetime(2025, 3, 1, 10, 5)
        events = store.events("ftjob-old-done")
        assert [(e.message, e.data) for e in events] == [("job created", None), ("succeeded", {"steps": 40})]
        file = store.get_file("file-old")
        assert file is not None and (file.filename, file.bytes) == ("reviews.jsonl", 2048)
        # new jobs are written after the old ones (the database's numbering carried on) ...
        new = store.create_job(task="retrieval", base_model="momo-test:v2", dataset={"path": "p"}, params={})
        page, more = store.page(10)
        assert [j.id for j in page] == [new.id, "ftjob-old-queued", "ftjob-old-done"] and not more
        assert store.counts()["queued"] == 2
        # ... and the old queued job runs as any other
        assert store.claim("ftjob-old-queued", "w:1", stale_after_s=60, max_attempts=2).ok
        assert store.finish("ftjob-old-queued", "w:1", "succeeded", result_model="momo-test:v3")
        finished = store.get("ftjob-old-queued")
        assert finished is not None and finished.state == "succeeded" and finished.attempts == 1
        store.delete_job("ftjob-old-done")  # its events go with it (the foreign key survived)
        assert store.get("ftjob-old-done") is None and store.events("ftjob-old-done") == []
    finally:
        store.close()


def test_a_fresh_database_is_created_at_head_as_the_tables_say(url: str) -> None:
    store = JobStore(url)
    try:
        store.upgrade_schema()
        assert _revision_and_drift(store) == (_head(), [])
        assert _tables(url) == {"fine_tune_jobs", "fine_tune_events", "uploaded_files", VERSION_TABLE}
        job = store.create_job(task="vqa", base_model="momo-test:v1", dataset={"path": "q"}, params={})
        assert store.get(job.id) == job
    finally:
        store.close()


def test_the_drift_check_sees_a_table_change_without_a_migration(url: str) -> None:
    """The check above can fail: a column the migrations never made shows up as a difference."""
    store = JobStore(url)
    try:
        store.upgrade_schema()
        with store.engine.begin() as conn:
            conn.execute(text("ALTER TABLE uploaded_files ADD COLUMN note TEXT"))
        _, drift = _revision_and_drift(store)
        assert [d[0] for d in drift if isinstance(d, tuple)] == ["remove_column"], drift
    finally:
        store.close()


UPGRADE_WHEN_TOLD = """
import sys
from service.jobs.repository import JobStore
store = JobStore(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
store.upgrade_schema()
"""


def test_processes_starting_together_upgrade_once(url: str) -> None:
    """API replicas and workers start side by side: each upgrade waits for the other, none fails."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", UPGRADE_WHEN_TOLD, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for process in processes:  # every one imported and holds its store: start them at once
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        for process in processes:
            _, stderr = process.communicate(timeout=120)
            assert process.returncode == 0, stderr[-2000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    store = JobStore(url)
    try:
        assert _revision_and_drift(store) == (_head(), [])
    finally:
        store.close()


def test_an_unknown_old_schema_version_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    _create_old_database(url, version=2)
    with pytest.raises(SchemaMismatch, match="pre-Alembic schema version 2"):
        JobStore(url).upgrade_schema()
    assert "schema_version" in _tables(url) and VERSION_TABLE not in _tables(url)  # rolled back


def test_a_database_of_a_newer_revision_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = JobStore(url)
    store.upgrade_schema()
    with store.engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = 'f00d'"))
    store.close()
    with pytest.raises(SchemaMismatch, match="newer MoMo"):
        JobStore(url).upgrade_schema()
    # and `momo worker` refuses to start on it, with the message
    env = {**os.environ, "MOMO_DATABASE_URL": url, "MOMO_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "momo.cli", "worker"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "f00d" in result.stderr, result.stderr[-2000:]
