"""Container health checks (Docker HEALTHCHECK and the compose healthchecks): exit 0 healthy, 1 not.

    python /opt/momo/healthcheck.py api      # GET http://127.0.0.1:$MOMO_PORT/health answers 200
    python /opt/momo/healthcheck.py worker   # this container's Celery worker answers a ping over
                                             # the broker ($MOMO_BROKER_URL)

`/health` is liveness (the process serves HTTP); readiness (a model loaded, inference threads
alive) is `/ready`, which the API also answers 503 while no model is active, so it is not used for
the container's health: a replica without a model is alive and can be given one over HTTP.
The worker check pings through the broker and matches this container's hostname, so it needs no
knowledge of the Celery app module; it fails while the broker is down (the worker can't work then).
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request


def check_api(timeout: float) -> str | None:
    port = os.environ.get("MOMO_PORT", "8000")
    url = f"http://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status == 200:
                return None
            return f"{url} answered {response.status}"
    except OSError as exc:
        return f"{url}: {exc}"


def check_worker(timeout: float) -> str | None:
    broker = os.environ.get("MOMO_BROKER_URL")
    if not broker:
        return "MOMO_BROKER_URL is not set"
    from celery import Celery

    app = Celery("momo-healthcheck", broker=broker, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = False
    app.conf.broker_connection_max_retries = 0
    host = socket.gethostname()
    try:
        replies = app.control.ping(timeout=timeout) or []
    except Exception as exc:  # broker down or unreachable: a worker can't take jobs either
        return f"ping over {broker.split('@')[-1]} failed: {exc}"
    finally:
        app.close()
    names = [name for reply in replies for name in reply]
    if any(name.rpartition("@")[2] == host for name in names):
        return None
    return f"no worker on host {host!r} answered (answers from: {names or 'none'})"


def main(argv: list[str]) -> int:
    role = argv[1] if len(argv) > 1 else os.environ.get("MOMO_ROLE", "api")
    timeout = float(os.environ.get("MOMO_HEALTHCHECK_TIMEOUT_S", "4"))
    checks = {"api": check_api, "worker": check_worker}
    if role not in checks:
        print(f"unknown role {role!r}; known: {', '.join(checks)}", file=sys.stderr)
        return 2
    problem = checks[role](timeout)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
