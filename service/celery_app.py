"""The Celery app of the fine-tuning queue, configured from settings (`MOMO_BROKER_URL`, …).

    celery -A service.celery_app worker        # a worker from the environment (same as `momo worker`)

Brokers:
- **Redis** in deployment (`MOMO_BROKER_URL=redis://host:6379/0`, results in
  `MOMO_RESULT_BACKEND=redis://host:6379/1`). The visibility timeout is set above the hard time
  limit, so a message of a long fine-tune is never handed to a second worker while the first one
  still runs it (and if it were, the job record's claim would turn the duplicate away).
- **The embedded broker** (default, no server): kombu's SQLAlchemy transport on a SQLite file,
  `sqla+sqlite:///<data_dir>/broker.sqlite`. Chosen over the filesystem transport because it needs no
  folder conventions, keeps one file, and takes its lock with `BEGIN IMMEDIATE`, so the API process
  and the worker process can share it safely. It has no fanout, so remote control (ping, revoke) is
  off with it; cancellation never needs it (the job record carries the cancel flag).

Task policy (every fine-tune): `acks_late` + `reject_on_worker_lost` — the message is acknowledged
only when the task returns, and a worker process that dies mid-task (kill -9, OOM) sends it back to
the queue, where the next delivery takes the job over (see `service.jobs.leases.Leases.claim`); soft
and hard time limits; prefetch 1 and concurrency 1 per worker by default (a fine-tune uses the
cores). The API process only *sends* tasks by name (`send_task("momo.finetune", …)`); task code
lives in `service.celery_tasks`, imported by workers only.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from service.jobs.settings import JobSettings

FINETUNE_TASK = "momo.finetune"


def make_celery(settings: JobSettings, *, role: str = "worker") -> Celery:
    """A Celery app for `settings`. role "api": publishing fails fast while the broker is down (the
    API answers 503); role "worker": the worker reconnects patiently and loads the task module."""
    broker = settings.resolved_broker_url
    backend = settings.result_backend or None
    app = Celery(
        "momo",
        broker=broker,
        backend=backend,
        include=["service.celery_tasks"] if role == "worker" else [],
        set_as_current=role == "worker",
    )
    transport: dict[str, Any] = {}
    if broker.startswith(("redis://", "rediss://")):
        transport["visibility_timeout"] = int(settings.hard_time_limit_s + 600)
        transport["socket_connect_timeout"] = 5
    if role == "api":
        # Connection attempts while publishing: a few quick tries, then an error (-> 503).
        transport.update({"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5})
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_time_limit=settings.hard_time_limit_s,
        task_soft_time_limit=settings.job_time_limit_s,
        task_default_queue=settings.job_queue,
        task_create_missing_queues=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=backend is None,
        result_expires=7 * 24 * 3600,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.job_concurrency,
        worker_enable_remote_control=not settings.embedded_broker,
        worker_send_task_events=False,
        # A broker connection lost mid-job (Redis restart) does not stop the running fine-tune; its
        # late ack may then be lost, and the redelivered duplicate is turned away by the job's claim.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        broker_transport_options=transport,
        broker_pool_limit=4,
        enable_utc=True,
    )
    app.momo_settings = settings  # read by the task (settings_of)
    return app


def settings_of(app: Celery) -> JobSettings:
    """The settings an app was made from (the environment's, for an app made elsewhere)."""
    settings = getattr(app, "momo_settings", None)
    return settings if isinstance(settings, JobSettings) else JobSettings()


def __getattr__(name: str) -> Any:
    # `celery -A service.celery_app worker` looks up `celery_app` / `app`: built on first access from
    # the environment, so importing this module (the API does) reads no settings and builds nothing.
    if name in ("celery_app", "app", "celery"):
        if "_environment_app" not in globals():
            globals()["_environment_app"] = make_celery(JobSettings(), role="worker")
        return globals()["_environment_app"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
