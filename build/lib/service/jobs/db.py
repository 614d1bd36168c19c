"""Job records in a SQL database (SQLAlchemy 2.0): SQLite by default, PostgreSQL by URL.

Tables: `fine_tune_jobs` (one row per job), `fine_tune_events` (the job's event log), `uploaded_files`
(datasets sent to POST /v1/files) and `schema_version` (one row). Both the API and the worker use
this module; it imports neither `training` nor torch.

Schema versioning (no Alembic): `JobStore.init_schema()` creates missing tables and writes
`SCHEMA_VERSION` into an empty database; a database written by another schema version is refused
with `SchemaMismatch` (the API and `momo worker` do not start) rather than being misread.

Ownership and concurrency: a worker *claims* a job with one conditional UPDATE (state and attempt
count must still be what it read), so two deliveries of the same task can never both run it;
heartbeats, progress and the final state are written only while the row still names that worker.
A worker that lost its claim (the sweeper gave the job to another) notices at its next heartbeat.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

log = logging.getLogger("momo.jobs")

SCHEMA_VERSION = 1
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
MAX_EVENTS_RETURNED = 500


class SchemaMismatch(RuntimeError):
    """The job database was written by a different schema version."""


def utcnow() -> datetime:
    """Naive UTC (SQLite keeps no time zone; every timestamp here is UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def worker_identity() -> str:
    """`host:pid` of this process (the process that runs the training)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Is `pid` a live (not zombie) process on this host?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def owner_is_dead(worker: str | None) -> bool:
    """True when `worker` (host:pid) names a process of *this* host that no longer runs."""
    if not worker:
        return True
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another host: only its heartbeat can tell
    return not pid_alive(int(pid))


# --- tables ---------------------------------------------------------------------------------------
class Base(DeclarativeBase):
    pass


class SchemaVersionRow(Base):
    __tablename__ = "schema_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    written_at: Mapped[datetime] = mapped_column(DateTime)


class JobRow(Base):
    __tablename__ = "fine_tune_jobs"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # list order
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    task: Mapped[str] = mapped_column(String(32))
    base_model: Mapped[str] = mapped_column(String(200))
    dataset: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"path": relative to the data root, "file_id"}
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"hyperparameters", "head", "output_name"}
    state: Mapped[str] = mapped_column(String(16), index=True)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, index=True)


class EventRow(Base):
    __tablename__ = "fine_tune_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("fine_tune_jobs.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime)
    level: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class FileRow(Base):
    __tablename__ = "uploaded_files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    filename: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))  # "jsonl" | "zip"
    path: Mapped[str] = mapped_column(Text)  # the stored file or extracted folder, relative to the data root
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)


# --- plain records handed out (no session attached) -------------------------------------------------
@dataclass(frozen=True)
class Job:
    id: str
    task: str
    base_model: str
    dataset: dict[str, Any]
    params: dict[str, Any]
    state: str
    step: int
    total_steps: int | None
    progress: float
    metrics: dict[str, Any]
    result_model: str | None
    error: str | None
    error_code: str | None
    attempts: int
    cancel_requested: bool
    worker: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, row: JobRow) -> Job:
        return cls(**{name: getattr(row, name) for name in cls.__dataclass_fields__})

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True)
class Event:
    created_at: datetime
    level: str
    message: str
    data: dict[str, Any] | None


@dataclass(frozen=True)
class UploadedFile:
    id: str
    filename: str
    kind: str
    path: str
    bytes: int
    sha256: str
    created_at: datetime


@dataclass(frozen=True)
class Claim:
    """The outcome of a worker's attempt to take a job."""

    ok: bool
    reason: str  # "claimed" | "missing" | "terminal" | "busy" | "exhausted" | "raced"
    job: Job | None = None


def _changed(session: Session, statement: Any) -> int:
    """Execute an UPDATE and return how many rows it changed."""
    return int(getattr(session.execute(statement), "rowcount", 0) or 0)


# --- the store --------------------------------------------------------------------------------------
def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class JobStore:
    """Every read and write of job records. Thread-safe (one session per call)."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            path = url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    # --- schema ---------------------------------------------------------------------------------------
    def init_schema(self) -> None:
        """Create what is missing; refuse a database of another schema version."""
        Base.metadata.create_all(self.engine)
        try:
            with self.session() as s:
                if s.get(SchemaVersionRow, 1) is None:
                    s.add(SchemaVersionRow(id=1, version=SCHEMA_VERSION, written_at=utcnow()))
        except IntegrityError:  # pragma: no cover - another process wrote it first; read theirs
            pass
        with self.session() as s:
            row = s.get(SchemaVersionRow, 1)
            found = row.version if row is not None else None
        if found != SCHEMA_VERSION:
            raise SchemaMismatch(
                f"the job database {self._where()} has schema version {found}, this MoMo expects "
                f"{SCHEMA_VERSION}; point MOMO_DATABASE_URL at a new database (or move the old one "
                "away) — it is not converted automatically"
            )

    def _where(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    # --- jobs -----------------------------------------------------------------------------------------
    def create_job(
        self, *, task: str, base_model: str, dataset: dict[str, Any], params: dict[str, Any]
    ) -> Job:
        now = utcnow()
        row = JobRow(
            id=new_id("ftjob"),
            task=task,
            base_model=base_model,
            dataset=dataset,
            params=params,
            state="queued",
            step=0,
            total_steps=None,
            progress=0.0,
            metrics={},
            attempts=0,
            cancel_requested=False,
            created_at=now,
            updated_at=now,
        )
        with self.session() as s:
            s.add(row)
            s.flush()
            s.add(EventRow(job_id=row.id, created_at=now, level="info", message="job created", data=None))
            return Job.of(row)

    def delete_job(self, job_id: str) -> None:
        with self.session() as s:
            row = s.scalar(select(JobRow).where(JobRow.id == job_id))
            if row is not None:
                for ev in s.scalars(select(EventRow).where(EventRow.job_id == job_id)):
                    s.delete(ev)
                s.delete(row)

    def get(self, job_id: str) -> Job | None:
        with self.session() as s:
            row = s.scalar(select(JobRow).where(JobRow.id == job_id))
            return Job.of(row) if row is not None else None

    def page(self, limit: int, after: str | None = None) -> tuple[list[Job], bool]:
        """Newest first; `after`: the id of the last job of the previous page."""
        with self.session() as s:
            query = select(JobRow).order_by(JobRow.seq.desc()).limit(limit + 1)
            if after is not None:
                cursor = s.scalar(select(JobRow.seq).where(JobRow.id == after))
                if cursor is None:
                    raise KeyError(after)
                query = query.where(JobRow.seq < cursor)
            rows = list(s.scalars(query))
            return [Job.of(r) for r in rows[:limit]], len(rows) > limit

    def mark_sent(self, job_id: str) -> None:
        with self.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(sent_at=utcnow()))

    def add_event(
        self, job_id: str, message: str, level: str = "info", data: dict[str, Any] | None = None
    ) -> None:
        with self.session() as s:
            s.add(
                EventRow(job_id=job_id, created_at=utcnow(), level=level, message=message[:4000], data=data)
            )

    def events(self, job_id: str, limit: int = MAX_EVENTS_RETURNED) -> list[Event]:
        with self.session() as s:
            rows = s.scalars(
                select(EventRow).where(EventRow.job_id == job_id).order_by(EventRow.id.desc()).limit(limit)
            )
            return [Event(r.created_at, r.level, r.message, r.data) for r in reversed(list(rows))]

    def cancel(self, job_id: str) -> Job | None:
        """A queued job becomes cancelled at once; a running one gets `cancel_requested` (its worker
        stops at the next step). Finished jobs are returned unchanged."""
        now = utcnow()
        with self.session() as s:
            done = _changed(
                s,
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == "queued")
                .values(state="cancelled", cancel_requested=True, finished_at=now, updated_at=now),
            )
            if done:
                s.add(EventRow(job_id=job_id, created_at=now, level="info", message="cancelled while queued"))
            else:
                asked = _changed(
                    s,
                    update(JobRow)
                    .where(JobRow.id == job_id, JobRow.state == "running", JobRow.cancel_requested.is_(False))
                    .values(cancel_requested=True, updated_at=now),
                )
                if asked:
                    s.add(
                        EventRow(
                            job_id=job_id,
                            created_at=now,
                            level="info",
                            message="cancellation requested; the worker stops at the next step",
                        )
                    )
            row = s.scalar(select(JobRow).where(JobRow.id == job_id))
            return Job.of(row) if row is not None else None

    # --- worker side ------------------------------------------------------------------------------------
    def claim(self, job_id: str, worker: str, *, stale_after_s: float, max_attempts: int) -> Claim:
        """Take `job_id` for `worker`: a queued job, or a running one whose worker is gone (no heartbeat
        for `stale_after_s`, or a dead process on this host: a redelivery after a crash). A job that
        already ran `max_attempts` times is failed instead."""
        now = utcnow()
        with self.session() as s:
            row = s.scalar(select(JobRow).where(JobRow.id == job_id))
            if row is None:
                return Claim(False, "missing")
            job = Job.of(row)
        if job.terminal:
            return Claim(False, "terminal", job)
        if job.state == "running":
            fresh = job.heartbeat_at is not None and now - job.heartbeat_at < timedelta(seconds=stale_after_s)
            if fresh and job.worker != worker and not owner_is_dead(job.worker):
                return Claim(False, "busy", job)  # a duplicate delivery while its worker is alive
        lost = job.state == "running"
        with self.session() as s:
            guard = (JobRow.id == job_id, JobRow.state == job.state, JobRow.attempts == job.attempts)
            if job.attempts >= max_attempts:
                reason = (
                    f"worker lost during attempt {job.attempts} of {max_attempts} ({job.worker}); giving up"
                    if lost
                    else f"already ran {job.attempts} time(s), the limit is {max_attempts}"
                )
                n = _changed(
                    s,
                    update(JobRow)
                    .where(*guard)
                    .values(
                        state="failed",
                        error=reason,
                        error_code="worker_lost",
                        finished_at=now,
                        updated_at=now,
                    ),
                )
                if n:
                    s.add(EventRow(job_id=job_id, created_at=now, level="error", message=reason))
                return Claim(False, "exhausted" if n else "raced", job)
            n = _changed(
                s,
                update(JobRow)
                .where(*guard)
                .values(
                    state="running",
                    attempts=job.attempts + 1,
                    worker=worker,
                    heartbeat_at=now,
                    started_at=job.started_at or now,
                    updated_at=now,
                    step=0,
                    progress=0.0,
                ),
            )
            if not n:
                return Claim(False, "raced", job)
            note = f" (retry: the previous worker {job.worker} was lost)" if lost else ""
            s.add(
                EventRow(
                    job_id=job_id,
                    created_at=now,
                    level="warning" if lost else "info",
                    message=f"attempt {job.attempts + 1} started on {worker}{note}",
                )
            )
            row = s.scalar(select(JobRow).where(JobRow.id == job_id))
            assert row is not None
            return Claim(True, "claimed", Job.of(row))

    def heartbeat(self, job_id: str, worker: str) -> tuple[bool, bool]:
        """(still ours, cancel requested). Not ours any more: the job was taken or finished elsewhere."""
        now = utcnow()
        with self.session() as s:
            n = _changed(
                s,
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.worker == worker, JobRow.state == "running")
                .values(heartbeat_at=now),
            )
            cancel = s.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id))
            return bool(n), bool(cancel)

    def progress(
        self, job_id: str, worker: str, step: int, total: int, metrics: dict[str, Any] | None = None
    ) -> None:
        now = utcnow()
        values: dict[str, Any] = {
            "step": step,
            "total_steps": total,
            "progress": round(step / total, 6) if total else 0.0,
            "heartbeat_at": now,
            "updated_at": now,
        }
        if metrics is not None:
            values["metrics"] = metrics
        with self.session() as s:
            s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.worker == worker, JobRow.state == "running")
                .values(**values)
            )

    def finish(
        self,
        job_id: str,
        worker: str,
        state: str,
        *,
        result_model: str | None = None,
        metrics: dict[str, Any] | None = None,
        error: str | None = None,
        error_code: str | None = None,
        message: str | None = None,
    ) -> bool:
        """Write the final state (only while `worker` owns the job); False when it did not."""
        assert state in TERMINAL
        now = utcnow()
        values: dict[str, Any] = {
            "state": state,
            "result_model": result_model,
            "error": error,
            "error_code": error_code,
            "finished_at": now,
            "updated_at": now,
        }
        if metrics is not None:
            values["metrics"] = metrics
        if state == "succeeded":
            values["progress"] = 1.0
        with self.session() as s:
            n = _changed(
                s,
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.worker == worker, JobRow.state == "running")
                .values(**values),
            )
            if n:
                level = {"succeeded": "info", "cancelled": "info", "failed": "error"}[state]
                text = message or (f"{state}: {error}" if error else state)
                s.add(EventRow(job_id=job_id, created_at=now, level=level, message=text[:4000]))
            return bool(n)

    # --- sweeping -----------------------------------------------------------------------------------------
    def sweep(
        self, *, stale_after_s: float, max_attempts: int, requeue_after_s: float
    ) -> tuple[list[str], list[str]]:
        """Running jobs without a heartbeat for `stale_after_s` go back to the queue (or fail after
        `max_attempts`); queued jobs not picked up for `requeue_after_s` are due for re-sending.
        Returns (job ids to send again, job ids failed)."""
        now = utcnow()
        stale = now - timedelta(seconds=stale_after_s)
        resend: list[str] = []
        failed: list[str] = []
        with self.session() as s:
            running = list(s.scalars(select(JobRow).where(JobRow.state == "running")))
        # stale: no recent heartbeat, or (on this host) the process that ran it is gone
        rows = [
            r for r in running if r.heartbeat_at is None or r.heartbeat_at < stale or owner_is_dead(r.worker)
        ]
        for row in rows:
            guard = (JobRow.id == row.id, JobRow.state == "running", JobRow.attempts == row.attempts)
            age = (now - row.heartbeat_at).total_seconds() if row.heartbeat_at else None
            seen = f"no heartbeat for {age:.0f} s" if age is not None else "no heartbeat"
            with self.session() as s:
                if row.cancel_requested or row.attempts >= max_attempts:
                    state = "cancelled" if row.cancel_requested else "failed"
                    reason = (
                        f"worker {row.worker} lost ({seen}) after attempt {row.attempts} of {max_attempts}"
                    )
                    n = _changed(
                        s,
                        update(JobRow)
                        .where(*guard)
                        .values(
                            state=state,
                            error=None if state == "cancelled" else reason,
                            error_code=None if state == "cancelled" else "worker_lost",
                            finished_at=now,
                            updated_at=now,
                        ),
                    )
                    if n:
                        s.add(EventRow(job_id=row.id, created_at=now, level="error", message=reason))
                        failed.append(row.id)
                else:
                    n = _changed(
                        s,
                        update(JobRow)
                        .where(*guard)
                        .values(state="queued", worker=None, sent_at=now, updated_at=now),
                    )
                    if n:
                        s.add(
                            EventRow(
                                job_id=row.id,
                                created_at=now,
                                level="warning",
                                message=f"worker {row.worker} lost ({seen}); job requeued",
                            )
                        )
                        resend.append(row.id)
        with self.session() as s:
            overdue = now - timedelta(seconds=requeue_after_s)
            ids = list(
                s.scalars(
                    select(JobRow.id).where(
                        JobRow.state == "queued",
                        JobRow.sent_at.is_not(None),
                        JobRow.sent_at < overdue,
                    )
                )
            )
            if ids:
                s.execute(update(JobRow).where(JobRow.id.in_(ids)).values(sent_at=now))
        return resend + ids, failed

    def unfinished(self) -> int:
        with self.session() as s:
            return int(
                s.scalar(
                    select(func.count()).select_from(JobRow).where(JobRow.state.in_(("queued", "running")))
                )
                or 0
            )

    def counts(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(select(JobRow.state, func.count()).group_by(JobRow.state)).all()
        counts = dict.fromkeys(STATES, 0)
        counts.update({str(state): int(n) for state, n in rows})
        return counts

    def finished_since(self, since: datetime) -> list[tuple[str, float, datetime]]:
        """(state, seconds from creation to the end, finished_at) of jobs finished after `since`."""
        with self.session() as s:
            rows = s.execute(
                select(JobRow.state, JobRow.created_at, JobRow.started_at, JobRow.finished_at)
                .where(JobRow.finished_at.is_not(None), JobRow.finished_at > since)
                .order_by(JobRow.finished_at),
            ).all()
        out = []
        for state, created, started, finished in rows:
            assert finished is not None
            begin = started or created
            out.append((str(state), max(0.0, (finished - begin).total_seconds()), finished))
        return out

    # --- files --------------------------------------------------------------------------------------------
    def add_file(self, file: UploadedFile) -> None:
        with self.session() as s:
            s.add(FileRow(**file.__dict__))

    def get_file(self, file_id: str) -> UploadedFile | None:
        with self.session() as s:
            row = s.get(FileRow, file_id)
            if row is None:
                return None
            return UploadedFile(
                row.id, row.filename, row.kind, row.path, row.bytes, row.sha256, row.created_at
            )
