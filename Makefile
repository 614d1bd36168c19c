# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
# Both create .venv, install system packages with apt-get where missing, then pip.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU build from this machine's disk; GPU images install their own torch.
TORCH_SPEC ?= torch==2.13.0
# chromium (+ its driver, for Selenium users): the playground's browser tests drive Debian's build headless
APT_PACKAGES := dataset-fashion-mnist fonts-noto-color-emoji wordnet-base fortunes fortunes-min fortunes-bofh-excuses \
	fortunes-debian-hints dict-gcide openclipart-png redis-server \
	chromium chromium-driver
STAMP := $(VENV)/.installed

.PHONY: serve test lint typecheck venv system-deps pretrain-default data eval-default export-default bench screenshots \
	locks locks-check clean

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" != 0 ] && SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml
	$(MAKE) system-deps
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[train,serve,dev]"
	touch $(STAMP)

venv: $(STAMP)

serve: $(STAMP)
	MOMO_AUTH_DISABLED=true $(VENV)/bin/momo serve $(SERVE_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check momo training service tests benchmarks
	$(VENV)/bin/ruff format --check momo training service tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy momo training service

# Redis and PostgreSQL are started when installed but down, so the job and store tests run instead of
# skipping; pytest lists every skip with its reason (-rs, in pyproject.toml).
test: $(STAMP) system-deps
	bash .ci/services.sh
	$(VENV)/bin/ruff check momo training service tests benchmarks
	$(VENV)/bin/ruff format --check momo training service tests benchmarks
	$(VENV)/bin/mypy momo training service
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

data: $(STAMP)
	$(VENV)/bin/momo data prepare

pretrain-default: $(STAMP)
	$(VENV)/bin/momo data prepare
	$(VENV)/bin/momo pretrain --config training/recipes/default.yaml --out runs/default --register momo-tiny --activate

eval-default: $(STAMP)
	$(VENV)/bin/momo data prepare
	$(VENV)/bin/momo eval momo-tiny --out runs/eval-default

export-default: $(STAMP)
	$(VENV)/bin/momo export momo-tiny --int8 --no-torchscript

# docs/ui/*.png: the playground's browser tests write a screenshot of each section they checked
screenshots: $(STAMP)
	MOMO_UI_SCREENSHOTS=$(CURDIR)/docs/ui $(VENV)/bin/pytest -q tests/service/ui

# wrk: serve_load.py's load generator (a compiled client, so the measured cores serve the service)
bench: $(STAMP)
	$(MAKE) system-deps APT_PACKAGES=wrk
	$(VENV)/bin/python benchmarks/train_throughput.py
	$(VENV)/bin/python benchmarks/runtime.py
	$(VENV)/bin/python benchmarks/serve_load.py

# The Docker images' hashed lock files (docker/requirements/), resolved on PyPI by `uv pip compile` for
# the images' Python and platform: rerun `make locks` after changing dependencies in pyproject.toml;
# `make locks-check` regenerates them into a temporary folder and fails when they differ.
locks: $(STAMP)
	UV=$(VENV)/bin/uv bash docker/lock.sh

locks-check: $(STAMP)
	UV=$(VENV)/bin/uv bash docker/lock.sh --check

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
