"""Leases on jobs: which worker runs a job, and what happens when it is lost.

A worker *claims* a job with one conditional UPDATE (state and attempt count must still be what it
read), so two deliveries of the same task can never both run it; heartbeats, progress and the final
state are written only while the row still names that worker. A worker that lost its claim (the
sweeper gave the job to another) notices at its next heartbeat. The sweeper requeues running jobs
whose worker is gone (no heartbeat, or a dead process on this host) and fails them after
`max_attempts`.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from service.jobs.database import JobDatabase, changed
from service.jobs.records import TERMINAL, Claim, Job, record, utcnow
from service.jobs.tables import EventRow, JobRow


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


class Leases(JobDatabase):
    """The worker side of the job records: claims, heartbeats, progress, results, the sweep."""

    def claim(self, job_id: str, worker: str, *, stale_after_s: float, max_attempts: int) -> Claim:
        """Take `job_id` for `worker`: a queued job, or a running one whose worker is gone (no heartbeat
        for `stale_after_s`, or a dead process on this host: a redelivery after a crash). A job that
        already ran `max_attempts` times is failed instead."""
        now = utcnow()
        with self.session() as s:
            row = s.scalar(select(JobRow).where(JobRow.id == job_id))
            if row is None:
                return Claim(False, "missing")
            job = record(Job, row)
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
                n = changed(
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
            n = changed(
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
            return Claim(True, "claimed", record(Job, row))

    def heartbeat(self, job_id: str, worker: str) -> tuple[bool, bool]:
        """(still ours, cancel requested). Not ours any more: the job was taken or finished elsewhere."""
        now = utcnow()
        with self.session() as s:
            n = changed(
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
            n = changed(
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
                    n = changed(
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
                    n = changed(
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
