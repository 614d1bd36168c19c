"""The API side of the job system: submitting (by task *name*), the stale-job sweeper, job metrics,
and the embedded worker subprocess that `momo serve` runs beside the API.

`JobService.start()` (in the app's lifespan) brings the job database's schema to head (Alembic; a
database this MoMo cannot upgrade stops the start-up with `SchemaMismatch`), then starts the
sweeper. Every `job_sweep_interval_s` the sweeper requeues running jobs whose worker is gone (no
heartbeat for `job_stale_after_s`, or a dead process on this host) and re-sends jobs queued for
longer than `job_requeue_after_s` (a message lost with the broker); it fails jobs that used up
`job_max_attempts`, refreshes the jobs-by-state gauge, observes the duration of newly finished
jobs, and restarts the embedded worker if it died.

The embedded worker (`job_worker=auto` with the embedded broker, or `always`): a `momo worker`
subprocess in its own process group, started at the first job (or at start-up when unfinished jobs
wait), stopped on shutdown (SIGTERM; SIGKILL to the group after a grace period — an interrupted
job is requeued on the next start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from celery import Celery

from service.celery_app import FINETUNE_TASK, make_celery
from service.jobs.records import Job, utcnow
from service.jobs.repository import JobStore
from service.jobs.settings import JobSettings

log = logging.getLogger("momo.jobs")

PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


class BrokerUnavailable(RuntimeError):
    """The task could not be handed to the broker (down, unreachable, refusing)."""


class EmbeddedWorker:
    """A `momo worker` subprocess with exactly the service's job settings."""

    def __init__(self, settings: JobSettings, command: list[str] | None = None) -> None:
        self.settings = settings
        self.command = command or [sys.executable, "-m", "momo.cli", "worker"]
        self.process: subprocess.Popen[bytes] | None = None
        self.wanted = False
        self.restarts = 0
        self._last_start = 0.0
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ensure_started(self) -> None:
        with self._lock:
            self.wanted = True
            if self.alive():
                return
            env = {
                **os.environ,
                **self.settings.worker_environment(),
                "MOMO_EMBEDDED_PARENT_PID": str(os.getpid()),  # the worker stops when this process is gone
            }
            self.process = subprocess.Popen(self.command, env=env, start_new_session=True)
            self._last_start = time.monotonic()
            log.info("embedded worker started (pid %d)", self.process.pid)

    def check(self) -> None:
        """Restart a worker that exited while it was wanted (at most every 5 s)."""
        if self.wanted and not self.alive() and time.monotonic() - self._last_start > 5.0:
            code = self.process.returncode if self.process is not None else None
            log.warning("embedded worker exited (code %s); restarting it", code)
            self.restarts += 1
            self.ensure_started()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self.wanted = False
            process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)  # warm shutdown of the main process (it stops its children)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("embedded worker did not stop in %.0f s; killing it", timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


class JobService:
    def __init__(self, settings: JobSettings, metrics: Any = None) -> None:
        self.settings = settings
        self.metrics = metrics  # service.metrics.Metrics (jobs gauge, job_duration histogram)
        self.store = JobStore(settings.resolved_database_url)
        self._celery: Celery | None = None
        self._celery_lock = threading.Lock()
        wants_worker = settings.job_worker == "always" or (
            settings.job_worker == "auto" and settings.embedded_broker
        )
        self.worker = EmbeddedWorker(settings) if wants_worker else None
        self._sweeper: asyncio.Task[None] | None = None
        self._observed_since = utcnow()

    # --- life cycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self.store.upgrade_schema)
        await asyncio.to_thread(self.settings.resolved_data_root.mkdir, parents=True, exist_ok=True)
        if self.worker is not None:
            waiting = await asyncio.to_thread(self.store.unfinished)
            if self.settings.job_worker == "always" or waiting:
                await asyncio.to_thread(self.worker.ensure_started)
        await asyncio.to_thread(self.refresh_metrics)
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="momo-job-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)
        if self._celery is not None:
            self._celery.close()
        self.store.close()

    # --- sending ---------------------------------------------------------------------------------------
    def celery(self) -> Celery:
        with self._celery_lock:
            if self._celery is None:
                self._celery = make_celery(self.settings, role="api")
            return self._celery

    def send(self, job_id: str) -> None:
        """Hand `momo.finetune(job_id)` to the broker, by name; BrokerUnavailable when it cannot."""
        try:
            self.celery().send_task(
                FINETUNE_TASK,
                args=[job_id],
                queue=self.settings.job_queue,
                retry=True,
                retry_policy=PUBLISH_RETRY,
            )
        except Exception as exc:  # kombu OperationalError, redis/socket errors, SQLite lock timeouts
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def submit(self, *, task: str, base_model: str, dataset: dict[str, Any], params: dict[str, Any]) -> Job:
        """Record a queued job and send its task; nothing is kept when the broker refuses it."""
        job = self.store.create_job(task=task, base_model=base_model, dataset=dataset, params=params)
        if self.worker is not None:
            self.worker.ensure_started()
        try:
            self.send(job.id)
        except BrokerUnavailable:
            self.store.delete_job(job.id)
            raise
        self.store.mark_sent(job.id)
        self.refresh_metrics()
        return self.store.get(job.id) or job

    # --- sweeping and metrics --------------------------------------------------------------------------
    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.job_sweep_interval_s)
            try:
                await asyncio.to_thread(self.sweep_once)
            except Exception:
                log.exception("job sweep failed")

    def sweep_once(self) -> list[str]:
        resend, failed = self.store.sweep(
            stale_after_s=self.settings.job_stale_after_s,
            max_attempts=self.settings.job_max_attempts,
            requeue_after_s=self.settings.job_requeue_after_s,
        )
        for job_id in failed:
            log.warning("job %s failed: its worker was lost", job_id)
        sent = []
        if resend and self.worker is not None:
            self.worker.ensure_started()
        for job_id in resend:
            try:
                self.send(job_id)
                sent.append(job_id)
                log.warning("job %s sent again (worker lost or message overdue)", job_id)
            except BrokerUnavailable as exc:
                log.warning("could not re-send job %s: %s", job_id, exc)
        if self.worker is not None:
            self.worker.check()
        self.refresh_metrics()
        return sent

    def refresh_metrics(self) -> None:
        if self.metrics is None:
            return
        for state, count in self.store.counts().items():
            self.metrics.jobs.labels(state).set(count)
        histogram = getattr(self.metrics, "job_duration", None)
        for state, seconds, finished in self.store.finished_since(self._observed_since):
            if histogram is not None:
                histogram.labels(state).observe(seconds)
            self._observed_since = max(self._observed_since, finished)
