"""Every read and write of job records and uploaded files, for the API and the worker: `JobStore`
(the worker-side leases it inherits live in `leases.py`, the engine and schema in `database.py`).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update

from service.jobs.database import changed
from service.jobs.leases import Leases
from service.jobs.records import STATES, Event, Job, UploadedFile, new_id, record, utcnow
from service.jobs.tables import EventRow, FileRow, JobRow

MAX_EVENTS_RETURNED = 500


class JobStore(Leases):
    """Jobs, their events and uploaded files; thread-safe (one session per call)."""

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
            return record(Job, row)

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
            return record(Job, row) if row is not None else None

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
            return [record(Job, r) for r in rows[:limit]], len(rows) > limit

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
            return [record(Event, r) for r in reversed(list(rows))]

    def cancel(self, job_id: str) -> Job | None:
        """A queued job becomes cancelled at once; a running one gets `cancel_requested` (its worker
        stops at the next step). Finished jobs are returned unchanged."""
        now = utcnow()
        with self.session() as s:
            done = changed(
                s,
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == "queued")
                .values(state="cancelled", cancel_requested=True, finished_at=now, updated_at=now),
            )
            if done:
                s.add(EventRow(job_id=job_id, created_at=now, level="info", message="cancelled while queued"))
            else:
                asked = changed(
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
            return record(Job, row) if row is not None else None

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
            s.add(FileRow(**asdict(file)))

    def get_file(self, file_id: str) -> UploadedFile | None:
        with self.session() as s:
            row = s.get(FileRow, file_id)
            return record(UploadedFile, row) if row is not None else None
