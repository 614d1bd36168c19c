#!/usr/bin/env bash
# Start the local services the tests use when they are installed but not running:
#   Redis on 127.0.0.1:6379 (job queue tests; `redis-server` is in the Makefile's APT_PACKAGES),
#   PostgreSQL on 127.0.0.1:5432 (job-store tests; used when installed, never installed here).
# Run by `make test` (and so by .ci/run). A service that cannot be started is reported, and the
# tests that need it are skipped with the reason (pytest -rs lists them).
set -uo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_up() {  # port name
  for _ in $(seq 1 100); do up "$1" && { echo "services: $2 is up on 127.0.0.1:$1"; return 0; }; sleep 0.1; done
  echo "services: $2 did not come up on 127.0.0.1:$1; the tests that need it will be skipped" >&2
}

if ! up 6379 && command -v redis-server >/dev/null; then
  dir=/var/lib/redis logdir=/var/log/redis
  if ! mkdir -p "$dir" "$logdir" 2>/dev/null || [ ! -w "$dir" ] || [ ! -w "$logdir" ]; then
    dir="${TMPDIR:-/tmp}/momo-redis" logdir="${TMPDIR:-/tmp}/momo-redis"  # not root: a private folder
    mkdir -p "$dir"
  fi
  echo "services: starting redis-server"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir "$dir" --logfile "$logdir/ci.log" && wait_up 6379 Redis
fi

if ! up 5432 && command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
  SUDO=""; [ "$(id -u)" != 0 ] && command -v sudo >/dev/null && SUDO="sudo -n"
  for version in $(ls /etc/postgresql); do
    echo "services: starting PostgreSQL $version (cluster main)"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
  wait_up 5432 PostgreSQL
fi
exit 0
