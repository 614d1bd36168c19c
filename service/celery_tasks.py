"""The `momo.finetune` task: runs `training.finetune` for one job record (worker side only).

One delivery of the task = one attempt at the job:
1. *claim* the record (queued -> running, attempt n+1, this process as its worker). A duplicate
   delivery (the job already runs elsewhere, or is finished or cancelled) returns at once; a
   redelivery after a crash takes the job over; a job that used up `job_max_attempts` is failed.
2. run the fine-tune with a heartbeat thread beside it: it refreshes the record's heartbeat and
   picks up a cancel request (or the loss of the claim), which the training loop sees before its
   next step. Progress and metrics go into the record (at most once a second), milestones into
   its events.
3. write the final state: succeeded (with the new version), cancelled (nothing registered), or
   failed with an error code and a message for the client: a malformed dataset names the file
   (relative to the data root) and line; an unexpected exception gets a fixed message pointing at
   the worker's log, which has the traceback. No message shows exception text or server paths.
Exceptions are turned into a failed record rather than re-raised: a deterministic failure must not be
retried. Only a lost worker process is retried (acks_late + reject_on_worker_lost requeue the
message; the stale-job sweeper covers a lost message).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from service.celery_app import FINETUNE_TASK, settings_of
from service.jobs.leases import worker_identity
from service.jobs.repository import JobStore
from service.jobs.settings import JobSettings

log = logging.getLogger("momo.jobs.worker")

_STORES: dict[tuple[str, int], JobStore] = {}
_STORES_LOCK = threading.Lock()


def job_store(settings: JobSettings) -> JobStore:
    """One `JobStore` per database and process (engines must not cross a fork)."""
    key = (settings.resolved_database_url, os.getpid())
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = JobStore(key[0])
            store.upgrade_schema()
            _STORES[key] = store
        return store


class Heartbeat(threading.Thread):
    """Refreshes the job's heartbeat; sets `cancel` on a cancel request or when the claim is lost."""

    def __init__(self, store: JobStore, job_id: str, worker: str, interval: float) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.store, self.job_id, self.worker = store, job_id, worker
        self.interval = min(1.0, interval)
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self._stop_event = threading.Event()

    def beat(self) -> None:
        try:
            ours, cancel = self.store.heartbeat(self.job_id, self.worker)
        except Exception as exc:  # the database is unreachable for a moment: try again next time
            log.warning("heartbeat of %s failed: %s", self.job_id, exc)
            return
        if not ours:
            self.lost.set()
        if cancel or not ours:
            self.cancel.set()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.beat()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


def _hyperparameters(params: dict[str, Any]) -> dict[str, Any]:
    return dict(params.get("hyperparameters") or {})


def client_message(message: str, settings: JobSettings) -> str:
    """`message` without the server's paths: the data root's own (callers name datasets relative to
    it) and the model store's are cut off; the rest of a path under them stays."""
    roots = (settings.resolved_data_root, settings.model_store.expanduser().absolute())
    forms = sorted({str(p) for root in roots for p in (root, root.resolve())}, key=len, reverse=True)
    for form in forms:
        message = message.replace(form + os.sep, "").replace(form, ".")
    return message


def run_job(job_id: str, settings: JobSettings) -> dict[str, Any]:
    """One attempt at `job_id` (see the module docstring); returns a small summary."""
    from momo.artifact import ArtifactError
    from momo.store import StoreError
    from training.data.formats import DataFormatError
    from training.finetune import Cancelled, FinetuneError, FinetuneOptions, run_finetune

    store = job_store(settings)
    me = worker_identity()
    claim = store.claim(
        job_id, me, stale_after_s=settings.job_stale_after_s, max_attempts=settings.job_max_attempts
    )
    if not claim.ok or claim.job is None:
        log.info("job %s not run: %s", job_id, claim.reason)
        return {"job": job_id, "outcome": claim.reason}
    job = claim.job
    log.info("job %s: attempt %d on %s", job_id, job.attempts, me)
    if settings.job_threads:
        import torch

        torch.set_num_threads(settings.job_threads)

    beat = Heartbeat(store, job_id, me, settings.job_heartbeat_s)
    beat.start()
    state = {"last_write": 0.0, "step": 0, "total": 0}
    running: dict[str, Any] = {}

    def on_progress(step: int, total: int, metrics: dict[str, float]) -> None:
        state["step"], state["total"] = step, total
        running.update({k: round(float(v), 6) for k, v in metrics.items()})
        now = time.monotonic()
        if now - state["last_write"] >= 1.0 or step == total:
            state["last_write"] = now
            store.progress(job_id, me, step, total, {"running": dict(running)})
        if settings.job_step_delay_s:
            time.sleep(settings.job_step_delay_s)

    def on_event(message: str, data: dict[str, Any]) -> None:
        store.add_event(job_id, message, data=data or None)

    def flush() -> None:
        """The last step reached (progress writes are throttled)."""
        if state["total"]:
            store.progress(job_id, me, int(state["step"]), int(state["total"]), {"running": dict(running)})

    data_root = settings.resolved_data_root
    params = job.params
    outcome = "failed"
    try:
        options = FinetuneOptions(
            task=job.task,
            head=params.get("head"),
            output_name=params.get("output_name"),
            export_onnx=settings.job_export_onnx,
            device=settings.job_device,
            **_hyperparameters(params),
        )
        result = run_finetune(
            job.base_model,
            data_root / str(job.dataset["path"]),
            options,
            store_root=settings.model_store,
            allowed_root=data_root,
            progress=on_progress,
            should_cancel=beat.cancel.is_set,
            on_event=on_event,
        )
    except Cancelled:
        flush()
        if beat.lost.is_set():
            log.warning("job %s was taken from this worker (%s); stopping without writing", job_id, me)
            return {"job": job_id, "outcome": "lost"}
        store.finish(
            job_id, me, "cancelled", message=f"cancelled at step {state['step']}; no version registered"
        )
        outcome = "cancelled"
    except SoftTimeLimitExceeded:
        store.finish(
            job_id,
            me,
            "failed",
            error=f"time limit of {settings.job_time_limit_s:.0f} s exceeded at step {state['step']}",
            error_code="time_limit",
        )
    except DataFormatError as exc:
        message = client_message(f"invalid dataset: {exc}", settings)
        store.finish(job_id, me, "failed", error=message, error_code="invalid_dataset")
    except (FinetuneError, StoreError, ArtifactError) as exc:
        store.finish(job_id, me, "failed", error=client_message(str(exc), settings), error_code="invalid_job")
    except Exception:
        log.exception("job %s failed", job_id)
        message = (
            f"the fine-tune failed with an internal error; the worker's log has the details (job {job_id})"
        )
        store.finish(job_id, me, "failed", error=message, error_code="internal_error")
    else:
        flush()
        metrics = {**result.metrics(), "running": dict(running)}
        if store.finish(
            job_id,
            me,
            "succeeded",
            result_model=result.reference,
            metrics=metrics,
            message=f"succeeded: registered {result.reference}",
        ):
            outcome = "succeeded"
        else:
            store.add_event(
                job_id,
                f"{result.reference} was registered by {me}, which no longer owned the job",
                level="warning",
            )
            outcome = "lost"
    finally:
        beat.stop()
    log.info("job %s: %s", job_id, outcome)
    return {"job": job_id, "outcome": outcome}


@shared_task(name=FINETUNE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def finetune(self: Task, job_id: str) -> dict[str, Any]:
    """Celery entry point: the settings come from the worker's app (`momo worker` flags / env)."""
    return run_job(job_id, settings_of(self.app))


__all__ = ["Heartbeat", "finetune", "job_store", "run_job"]
