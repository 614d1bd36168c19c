"""The job API: fine-tunes and dataset uploads (DESIGN §6). One router; mounted with API-key auth.

    POST /v1/files                      upload a dataset (multipart `file`: .jsonl or .zip) -> file id
    GET  /v1/files/{id}
    POST /v1/fine-tunes                 {task, model, training_file | dataset_path, head, hyperparameters}
    GET  /v1/fine-tunes                 newest first; ?limit=20&after=<id of the last job seen>
    GET  /v1/fine-tunes/{id}            state, progress, metrics, result_model, error, events
    POST /v1/fine-tunes/{id}/cancel

Status codes: 422 malformed request (types, bounds, both or neither dataset given); 400 a `model`
or `output_name` outside the store's reference grammar (`invalid_model_reference`); 403 a
dataset_path outside the data root (`..`, absolute elsewhere, symlinks leading out); 404 unknown
model, file, dataset path or job; 400 a dataset of the wrong shape for the task; 409 cancelling a
finished job; 413 an upload over `max_upload_bytes`; 503 the broker is down (nothing is recorded —
submit again). A finished job's `result_model` is activated through POST /v1/models/{id}/activate.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile

from momo.store import ModelStore, StoreError
from service.deps import ServicesDep
from service.errors import APIError, unavailable
from service.jobs.datasets import DatasetError, Limits, dataset_for_task, resolve_dataset_path, store_upload
from service.jobs.schemas import FileObject, FineTuneJob, FineTuneList, FineTuneRequest
from service.jobs.service import BrokerUnavailable, JobService
from service.validation import model_reference

router = APIRouter(tags=["fine-tuning"])


def _dataset_error(exc: DatasetError) -> APIError:
    return APIError(exc.status, exc.message, exc.code, param=exc.param)


def _not_found(job_id: str) -> APIError:
    return APIError(404, f"no fine-tune job {job_id!r}", "job_not_found")


# --- files -------------------------------------------------------------------------------------------
@router.post("/v1/files", response_model=FileObject, summary="Upload a fine-tuning dataset (.jsonl or .zip)")
async def upload_file(
    services: ServicesDep,
    file: Annotated[
        UploadFile, File(description="A .jsonl file, or a .zip of an image folder / JSONL + images")
    ],
    purpose: Annotated[str, Form()] = "fine-tune",
) -> FileObject:
    if purpose != "fine-tune":
        raise APIError(400, "purpose must be 'fine-tune'", "invalid_purpose", param="purpose")
    jobs = services.jobs
    settings = jobs.settings
    limits = Limits(
        settings.max_upload_bytes, settings.max_upload_entries, settings.max_upload_extracted_bytes
    )
    try:
        stored = await asyncio.to_thread(
            store_upload, file.file, file.filename, settings.resolved_data_root, limits
        )
    except DatasetError as exc:
        raise _dataset_error(exc) from None
    finally:
        await file.close()
    await asyncio.to_thread(jobs.store.add_file, stored)
    return FileObject.of(stored)


@router.get("/v1/files/{file_id}", response_model=FileObject, summary="One uploaded dataset")
async def get_file(file_id: str, services: ServicesDep) -> FileObject:
    stored = await asyncio.to_thread(services.jobs.store.get_file, file_id)
    if stored is None:
        raise APIError(404, f"no file {file_id!r}", "file_not_found")
    return FileObject.of(stored)


# --- fine-tunes --------------------------------------------------------------------------------------
def _prepare(body: FineTuneRequest, jobs: JobService) -> dict[str, Any]:
    """Resolve the base model and the dataset (blocking file-system work)."""
    settings = jobs.settings
    if body.model != "active":
        model_reference(body.model, "model")
    if body.output_name is not None:
        model_reference(body.output_name, "output_name", name_only=True)
    store = ModelStore(settings.model_store)
    try:
        base = store.reference_of(store.resolve(None if body.model == "active" else body.model))
    except StoreError as exc:
        raise APIError(404, str(exc), "model_not_found", param="model") from None
    root = settings.resolved_data_root.resolve()
    dataset: dict[str, Any]
    try:
        if body.training_file is not None:
            stored = jobs.store.get_file(body.training_file)
            if stored is None:
                raise APIError(
                    404, f"no file {body.training_file!r}", "file_not_found", param="training_file"
                )
            location = resolve_dataset_path(root, stored.path)
            path = dataset_for_task(body.task, location, "training_file")
            dataset = {"file_id": stored.id}
        else:
            assert body.dataset_path is not None
            path = dataset_for_task(body.task, resolve_dataset_path(root, body.dataset_path), "dataset_path")
            dataset = {}
    except DatasetError as exc:
        raise _dataset_error(exc) from None
    dataset["path"] = path.relative_to(root).as_posix()
    return {
        "task": body.task,
        "base_model": base,
        "dataset": dataset,
        "params": {
            "hyperparameters": body.hyperparameters.model_dump(),
            "head": body.head,
            "output_name": body.output_name,
        },
    }


@router.post("/v1/fine-tunes", response_model=FineTuneJob, summary="Start a fine-tune (a queued job)")
async def create_fine_tune(body: FineTuneRequest, services: ServicesDep) -> FineTuneJob:
    jobs = services.jobs
    prepared = await asyncio.to_thread(_prepare, body, jobs)
    try:
        job = await asyncio.to_thread(lambda: jobs.submit(**prepared))
    except BrokerUnavailable as exc:
        raise unavailable(
            f"the job queue is unavailable ({exc}); nothing was submitted, try again shortly",
            "broker_unavailable",
            retry_after=5,
        ) from None
    events = await asyncio.to_thread(jobs.store.events, job.id)
    return FineTuneJob.of(job, events)


@router.get("/v1/fine-tunes", response_model=FineTuneList, summary="Fine-tune jobs, newest first")
async def list_fine_tunes(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[
        str | None, Query(max_length=64, description="Id of the last job of the previous page")
    ] = None,
) -> FineTuneList:
    try:
        page, more = await asyncio.to_thread(services.jobs.store.page, limit, after)
    except KeyError:
        raise APIError(400, f"'after' names no job ({after!r})", "invalid_cursor", param="after") from None
    return FineTuneList(data=[FineTuneJob.of(j) for j in page], has_more=more)


@router.get("/v1/fine-tunes/{job_id}", response_model=FineTuneJob, summary="One job: state, progress, events")
async def get_fine_tune(job_id: str, services: ServicesDep) -> FineTuneJob:
    jobs = services.jobs
    job = await asyncio.to_thread(jobs.store.get, job_id)
    if job is None:
        raise _not_found(job_id)
    return FineTuneJob.of(job, await asyncio.to_thread(jobs.store.events, job_id))


@router.post(
    "/v1/fine-tunes/{job_id}/cancel",
    response_model=FineTuneJob,
    summary="Cancel: a queued job never starts; a running one stops at its next step (no version)",
)
async def cancel_fine_tune(job_id: str, services: ServicesDep) -> FineTuneJob:
    jobs = services.jobs
    job = await asyncio.to_thread(jobs.store.cancel, job_id)
    if job is None:
        raise _not_found(job_id)
    if job.state in ("succeeded", "failed"):
        raise APIError(409, f"job {job_id} already {job.state}; nothing to cancel", "job_not_cancellable")
    await asyncio.to_thread(jobs.refresh_metrics)
    return FineTuneJob.of(job, await asyncio.to_thread(jobs.store.events, job_id))
