#!/usr/bin/env bash
# The Docker images' lock files, docker/requirements/{api,worker,api-gpu,worker-gpu,build}.txt:
# `uv pip compile` with --generate-hashes for the image's Python and platform (not this machine's), so
# environment markers are evaluated as in the image and `pip install --require-hashes` checks every file.
#
#   bash docker/lock.sh           # rewrite the locks (make locks)
#   bash docker/lock.sh --check   # regenerate into a temporary folder; exit 1 if a lock differs (make locks-check)
#
# Both resolve on PyPI. An existing lock is uv's preference: versions move only where pyproject.toml's
# requirements (or the inputs below) no longer allow them; `UPGRADE=1` resolves everything anew.
# Roles (= the extras docker/install.sh installs): api = momo[serve], worker = momo[train,serve]; the CPU
# images run Python $CPU_PYTHON (docker/Dockerfile's base image), the GPU images Ubuntu 24.04's 3.12.
# torch is not in these files (overrides.txt keeps it out of the resolution): the CPU and GPU images
# install different builds from the PyTorch index (torch-cpu.txt, torch-gpu.txt); the CPU build's own
# requirements (torch-deps.in) are locked here. build.txt: pip and setuptools, which build the project
# (without build isolation), at the setuptools version of the role locks.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
UV="${UV:-.venv/bin/uv}"
locks=docker/requirements
CPU_PYTHON="$(sed -n 's/^ARG PYTHON_IMAGE=python:\([0-9.]*\)-.*/\1/p' docker/Dockerfile)"
GPU_PYTHON=3.12
[ -n "$CPU_PYTHON" ] || { echo "lock.sh: no python:X.Y.Z base image in docker/Dockerfile" >&2; exit 2; }

out="$locks"
if [ "${1:-}" = --check ]; then
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
  cp "$locks"/*.txt "$out"/  # the current pins are the preferences, as in a real run
fi
upgrade=()
[ -n "${UPGRADE:-}" ] && upgrade=(--upgrade)

compile() {  # PYTHON OUTPUT INPUTS...
  local python="$1" output="$2"
  shift 2
  "$UV" pip compile --quiet --generate-hashes "${upgrade[@]}" \
    --python-version "$python" --python-platform x86_64-manylinux_2_28 \
    --override "$locks/overrides.txt" --custom-compile-command "make locks" \
    -o "$out/$output" "$@"
}

for variant in cpu gpu; do
  python="$CPU_PYTHON" suffix=""
  [ "$variant" = gpu ] && python="$GPU_PYTHON" suffix="-gpu"
  compile "$python" "api$suffix.txt" pyproject.toml --extra serve "$locks/torch-deps.in"
  compile "$python" "worker$suffix.txt" pyproject.toml --extra train --extra serve "$locks/torch-deps.in"
done
# (constrained by the committed worker.txt, also in --check: the annotation names the path)
compile "$CPU_PYTHON" build.txt "$locks/build.in" --constraint "$locks/worker.txt"

if [ "${1:-}" = --check ]; then
  if ! diff -ru --exclude='*.in' --exclude=overrides.txt --exclude='torch-*.txt' --exclude=gpu.txt \
    "$locks" "$out" >&2; then
    echo "lock.sh: docker/requirements/ is stale: run \`make locks\`" >&2
    exit 1
  fi
  echo "docker/requirements/: up to date"
fi
