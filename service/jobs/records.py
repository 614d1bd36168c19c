"""The plain records the job database hands out: frozen copies of rows, with no session attached
(they cross threads and outlive the transaction that read them), and the one mapping from a row.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from service.jobs.tables import Base

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

RecordT = TypeVar("RecordT", bound="DataclassInstance")


def utcnow() -> datetime:
    """Naive UTC (SQLite keeps no time zone; every timestamp here is UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def record(kind: type[RecordT], row: Base) -> RecordT:
    """The `kind` record of an ORM row: each of its fields read from the row's attribute of that name."""
    return kind(**{field.name: getattr(row, field.name) for field in fields(kind)})


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
