"""`momo worker`: a Celery worker for the fine-tuning queue (the only service process that imports
`training`).

    momo worker                                   # settings from MOMO_* (broker, database, store, …)
    MOMO_BROKER_URL=redis://127.0.0.1:6379/0 momo worker --job-concurrency 1

Before consuming, it checks the job database's schema version (refusing to start on a mismatch) and
sweeps once: running jobs whose worker is gone are requeued (or failed after `job_max_attempts`).
The worker runs prefork children (`reject_on_worker_lost` needs a child process to lose), takes one
message at a time per child, and is named `momo@<host>` so container health checks can ping it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

from service.celery_app import FINETUNE_TASK, make_celery
from service.jobs.repository import JobStore
from service.jobs.settings import JobSettings

log = logging.getLogger("momo.jobs.worker")
PARENT_ENV = "MOMO_EMBEDDED_PARENT_PID"


def sweep_and_resend(settings: JobSettings, store: JobStore) -> list[str]:
    """Requeue stale jobs and send them again (by name); returns the ids sent."""
    resend, failed = store.sweep(
        stale_after_s=settings.job_stale_after_s,
        max_attempts=settings.job_max_attempts,
        requeue_after_s=settings.job_requeue_after_s,
    )
    for job_id in failed:
        log.warning("job %s failed: its worker was lost too often", job_id)
    if resend:
        app = make_celery(settings, role="api")
        try:
            for job_id in resend:
                app.send_task(FINETUNE_TASK, args=[job_id], queue=settings.job_queue)
                log.warning("job %s requeued (its worker was lost or its message overdue)", job_id)
        finally:
            app.close()
    return resend


def _exit_with_parent() -> None:
    """An embedded worker (started by `momo serve`, which sets MOMO_EMBEDDED_PARENT_PID) shuts down
    warmly when that process is gone, even if it died without stopping it (kill -9)."""
    parent = os.environ.get(PARENT_ENV, "")
    if not parent.isdigit():
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(2.0)
        log.warning("the API process %s is gone; stopping this embedded worker", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_worker(settings: JobSettings, *, loglevel: str = "info", hostname: str | None = None) -> None:
    """Run the worker in this process until it is told to stop (SIGTERM: finish the running job)."""
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = JobStore(settings.resolved_database_url)
    store.upgrade_schema()  # Alembic, to head; SchemaMismatch stops the worker with a clear message
    import torch  # noqa: F401 - loaded once in the parent, shared by the forked children

    import service.celery_tasks  # noqa: F401 - registers momo.finetune

    settings.resolved_data_root.mkdir(parents=True, exist_ok=True)
    try:
        sweep_and_resend(settings, store)
    except Exception as exc:  # the broker may be down at start; the API's sweeper retries later
        log.warning("start-up sweep could not requeue stale jobs: %s", exc)
    finally:
        store.close()
    _exit_with_parent()
    app = make_celery(settings, role="worker")
    name = hostname or f"momo@{socket.gethostname()}"
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--concurrency={settings.job_concurrency}",
        "--pool=prefork",
        f"--queues={settings.job_queue}",
        f"--hostname={name}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--prefetch-multiplier=1",
    ]
    log.info(
        "worker %s: broker %s, queue %s, database %s",
        name,
        settings.resolved_broker_url.split("@")[-1],
        settings.job_queue,
        store.engine.url.render_as_string(hide_password=True),
    )
    app.worker_main(argv)
