"""Request and response bodies of the job API (`/v1/fine-tunes`, `/v1/files`)."""

from __future__ import annotations

import calendar
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from momo.store import NAME_PATTERN, VERSION_PATTERN
from service.jobs.records import Event, Job, UploadedFile
from service.validation import RequestModel

Task = Literal["image_classification", "text_classification", "retrieval", "vqa"]
State = Literal["queued", "running", "succeeded", "failed", "cancelled"]
HEAD = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
FILE_ID = r"^file-[0-9a-f]{24}$"


class Hyperparameters(BaseModel):
    """Bounds keep one request from asking for absurd work; the defaults suit a pretrained base."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=3, ge=1, le=1000, description="Passes over the training split.")
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000, description="Cap on optimizer steps.")
    learning_rate: float = Field(default=3e-4, gt=0, le=0.1, description="Encoder learning rate.")
    head_lr_multiplier: float = Field(
        default=10.0, ge=0.01, le=1000, description="New head / projections learn this much faster."
    )
    batch_size: int = Field(default=32, ge=1, le=4096)
    freeze_encoder: bool = Field(default=False, description="Train only the head (retrieval: projections).")
    validation_split: float = Field(default=0.2, ge=0.0, le=0.5, description="Held-out fraction (seeded).")
    early_stopping_patience: int | None = Field(
        default=3, ge=0, le=1000, description="Validations without improvement before stopping (0: off)."
    )
    eval_every: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Steps between validations."
    )
    head_hidden: int | None = Field(default=None, ge=1, le=16384, description="MLP head hidden width.")
    weight_decay: float = Field(default=0.01, ge=0.0, le=1.0)
    warmup_ratio: float = Field(default=0.1, ge=0.0, le=0.5)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    limit: int | None = Field(
        default=None, ge=2, le=100_000_000, description="Use at most this many records."
    )


class FineTuneRequest(RequestModel):
    """`model` and `output_name` follow the store's reference grammar (the router checks them: 400
    `invalid_model_reference`); the patterns below document it in the OpenAPI schema."""

    model_config = ConfigDict(extra="forbid")

    task: Task
    model: str = Field(
        default="active",
        max_length=130,
        description="Base version: name[:version] or 'active'.",
        json_schema_extra={"pattern": f"^{NAME_PATTERN}(:{VERSION_PATTERN})?$"},
    )
    training_file: str | None = Field(default=None, pattern=FILE_ID, description="An id from POST /v1/files.")
    dataset_path: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="A path under the data root (MOMO_DATA_ROOT).",
    )
    head: str | None = Field(default=None, pattern=HEAD, description="Head name (default per task).")
    output_name: str | None = Field(
        default=None,
        max_length=64,
        description="Register the result under this model name (default: the base's).",
        json_schema_extra={"pattern": f"^{NAME_PATTERN}$"},
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)

    @model_validator(mode="after")
    def _one_dataset(self) -> FineTuneRequest:
        if (self.training_file is None) == (self.dataset_path is None):
            raise ValueError("give exactly one of training_file (an uploaded file id) and dataset_path")
        if self.task == "retrieval" and self.head is not None:
            raise ValueError("retrieval trains the encoder's projections; it takes no head")
        if self.head == "itm":
            raise ValueError("the head name 'itm' is reserved")
        if self.task == "retrieval" and self.hyperparameters.batch_size < 2:
            raise ValueError("retrieval needs batch_size >= 2 (in-batch negatives)")
        return self


def epoch(value: datetime | None) -> int | None:
    return None if value is None else calendar.timegm(value.utctimetuple())


class JobProgress(BaseModel):
    step: int
    total_steps: int | None
    fraction: float


class JobError(BaseModel):
    message: str
    code: str


class JobEvent(BaseModel):
    created_at: float
    level: str
    message: str
    data: dict[str, Any] | None = None


class FineTuneJob(BaseModel):
    object: Literal["fine_tune"] = "fine_tune"
    id: str
    task: str
    model: str
    dataset: dict[str, Any]
    head: str | None
    output_name: str | None
    hyperparameters: dict[str, Any]
    state: State
    progress: JobProgress
    metrics: dict[str, Any]
    result_model: str | None
    error: JobError | None
    attempts: int
    cancel_requested: bool
    created_at: int
    updated_at: int
    started_at: int | None
    finished_at: int | None
    events: list[JobEvent] | None = None

    @classmethod
    def of(cls, job: Job, events: list[Event] | None = None) -> FineTuneJob:
        return cls(
            id=job.id,
            task=job.task,
            model=job.base_model,
            dataset=job.dataset,
            head=job.params.get("head"),
            output_name=job.params.get("output_name"),
            hyperparameters=job.params.get("hyperparameters", {}),
            state=job.state,  # type: ignore[arg-type]
            progress=JobProgress(step=job.step, total_steps=job.total_steps, fraction=job.progress),
            metrics=job.metrics or {},
            result_model=job.result_model,
            error=JobError(message=job.error, code=job.error_code or "error") if job.error else None,
            attempts=job.attempts,
            cancel_requested=job.cancel_requested,
            created_at=epoch(job.created_at) or 0,
            updated_at=epoch(job.updated_at) or 0,
            started_at=epoch(job.started_at),
            finished_at=epoch(job.finished_at),
            events=None
            if events is None
            else [
                JobEvent(
                    created_at=calendar.timegm(e.created_at.utctimetuple()) + e.created_at.microsecond / 1e6,
                    level=e.level,
                    message=e.message,
                    data=e.data,
                )
                for e in events
            ],
        )


class FineTuneList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuneJob]
    has_more: bool


class FileObject(BaseModel):
    object: Literal["file"] = "file"
    id: str
    filename: str
    kind: str
    bytes: int
    sha256: str
    dataset_path: str
    created_at: int
    purpose: str = "fine-tune"

    @classmethod
    def of(cls, file: UploadedFile) -> FileObject:
        return cls(
            id=file.id,
            filename=file.filename,
            kind=file.kind,
            bytes=file.bytes,
            sha256=file.sha256,
            dataset_path=file.path,
            created_at=epoch(file.created_at) or 0,
        )
