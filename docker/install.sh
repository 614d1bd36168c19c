#!/usr/bin/env bash
# The one install procedure of the Docker images, run by the Dockerfiles' builder stages and replayed
# by tests/deploy/test_install_replay.py in a fresh venv (so an image never ships a broken install).
#
#   docker/install.sh deps    ROLE VARIANT   # pinned third-party packages into $VENV
#   docker/install.sh project ROLE VARIANT   # the project from the current directory (the build context)
#
# ROLE: api | worker. VARIANT: cpu | gpu. Run from the build context root (where pyproject.toml is).
# Environment:
#   VENV             the virtual environment to create/fill (default /opt/venv)
#   PYTHON           the interpreter that creates it (default python3)
#   TORCH_INDEX_URL  extra index holding the torch build (the Dockerfiles pass the PyTorch index:
#                    .../whl/cpu or .../whl/cu130); empty = only the indexes pip is configured with
# Versions: docker/requirements/build.txt and ROLE.txt (CPU) or ROLE-gpu.txt (GPU): hashed locks made by
# docker/lock.sh (`make locks`), installed with --require-hashes; torch-VARIANT.txt (the torch build, from
# the PyTorch index) and gpu.txt (onnxruntime-gpu for the GPU images), pinned by hand.
set -euo pipefail

step="${1:?usage: install.sh deps|project ROLE VARIANT}"
role="${2:?role: api | worker}"
variant="${3:?variant: cpu | gpu}"
case "$role" in api | worker) ;; *) echo "install.sh: unknown role '$role'" >&2; exit 2 ;; esac
case "$variant" in cpu | gpu) ;; *) echo "install.sh: unknown variant '$variant'" >&2; exit 2 ;; esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
reqs="$here/requirements"
VENV="${VENV:-/opt/venv}"
PYTHON="${PYTHON:-python3}"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)
# Which extras of the project each role installs (the lock file pins their closure).
extras=serve
[ "$role" = worker ] && extras=train,serve
lock="$reqs/$role.txt"
[ "$variant" = gpu ] && lock="$reqs/$role-gpu.txt"

case "$step" in
deps)
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "${pip[@]}" install --require-hashes -r "$reqs/build.txt"
  # Everything but torch, each file checked against the lock's hashes (torch's own requirements too).
  "${pip[@]}" install --require-hashes -r "$lock"
  torch_index=()
  [ -n "${TORCH_INDEX_URL:-}" ] && torch_index=(--extra-index-url "$TORCH_INDEX_URL")
  if [ "$variant" = cpu ]; then
    # Its requirements are installed already (`pip check` in the project step verifies).
    "${pip[@]}" install --no-deps "${torch_index[@]}" -r "$reqs/torch-cpu.txt"
  else
    # The CUDA build brings its CUDA libraries (pip packages, pinned exactly by the torch wheel), which
    # have no hashes here: constrain by the lock's versions alone (pip reads hashes in a constraints
    # file as hash-checking mode for the whole install).
    pins="$(mktemp)"
    sed -e '/--hash=/d' -e 's/ \\$//' "$lock" >"$pins"
    "${pip[@]}" install "${torch_index[@]}" -c "$pins" -r "$reqs/torch-gpu.txt"
    # onnxruntime and onnxruntime-gpu install the same `onnxruntime` module: swap the CPU build out
    # (uninstall first, or removing it later would delete files the GPU build shares).
    "${pip[@]}" uninstall -y onnxruntime
    "${pip[@]}" install -c "$pins" -r "$reqs/gpu.txt"
    rm -f "$pins"
  fi
  ;;
project)
  if [ "$variant" = cpu ]; then
    # --no-index: every requirement of the role's extras must already be installed from the lock
    # files, so a dependency missing from them fails here instead of floating to the newest release.
    "${pip[@]}" install --no-index --no-build-isolation ".[$extras]"
  else
    # The GPU build replaces onnxruntime (a requirement of the serve extra) with onnxruntime-gpu, so
    # install the project alone (ROLE-gpu.txt is resolved like ROLE.txt, whose completeness the line
    # above checks).
    "${pip[@]}" install --no-deps --no-build-isolation .
  fi
  "${pip[@]}" check
  # Leave out what an image never runs: third-party test suites, torch's C++ test binaries and
  # headers (no compiler in the image to use them), onnx's backend test data (~200 MB together).
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  find "$site" -type d -name tests -prune -exec rm -rf {} +
  rm -rf "$site/torch/test" "$site/torch/include" "$site/onnx/backend/test/data"
  # Sanity: the entry point exists and imports what the role serves.
  "$VENV/bin/momo" --help >/dev/null
  "$VENV/bin/python" -c "import momo.runtime, service.app, onnx, onnxruntime, faiss, celery"
  if [ "$role" = worker ]; then
    "$VENV/bin/python" -c "import training, sklearn, webdataset"
  fi
  ;;
*)
  echo "install.sh: unknown step '$step' (deps | project)" >&2
  exit 2
  ;;
esac
