# Two commands do all the set-up: `make run` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SIMPTH := $(VENV)/.simulation

.PHONY: install run test unit integration e2e faults bench lint format clean lock production-check

# Dependencies from the lock (pip-tools, hashes checked), then the project itself (editable).
$(STAMP): pyproject.toml requirements-dev.lock
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The simulation harness (simulation/) is not part of the wheel: a .pth file puts the
# checkout on the venv's sys.path, so `import simulation` works here (and in its workers).
$(SIMPTH): $(STAMP)
	$(BIN)/python -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "retry_pipeline_simulation.pth").write_text(str(pathlib.Path.cwd().resolve()) + "\n")'
	touch $(SIMPTH)

install: $(STAMP) $(SIMPTH)  ## create .venv/ and install the locked dependencies, the project and the simulation

# requirements.lock: the image (runtime + Flower); requirements-dev.lock: make install.
LOCK_FLAGS := --quiet --strip-extras --generate-hashes --allow-unsafe --no-emit-index-url --no-emit-find-links
lock:  ## regenerate both lock files from pyproject.toml (needs PyPI)
	$(BIN)/pip-compile $(LOCK_FLAGS) --extra flower -o requirements.lock pyproject.toml
	$(BIN)/pip-compile $(LOCK_FLAGS) --extra flower --extra test -o requirements-dev.lock pyproject.toml

production-check: install  ## the README's production steps against local PostgreSQL and a private Redis
	scripts/production-check.sh

run: install  ## the main job: a post-holiday morning of 300 applications through the real pipeline
	$(BIN)/retry-pipeline demo --applications 300 --seed 7

test: install  ## the whole suite (unit, integration, e2e)
	$(BIN)/python -m pytest

unit: install
	$(BIN)/python -m pytest tests/unit

integration: install
	$(BIN)/python -m pytest tests/integration

e2e: install
	$(BIN)/python -m pytest tests/e2e

faults: install  ## the whole fault matrix on PostgreSQL (FAULTS_DB=sqlite: SQLite), written to docs/reliability.md (about 12 minutes)
	mkdir -p var
	$(BIN)/retry-pipeline scenario post-holiday --applications 40 --seed 11 --output var/faults-scenario.json
	$(BIN)/retry-pipeline fault-matrix var/faults-scenario.json --seeds 1,2 --database $(or $(FAULTS_DB),postgresql) --output docs/reliability.md

bench: install  ## the benchmark against a raw Celery no-op task (bench/results.json)
	$(BIN)/python bench/run.py --output bench/results.json $(if $(filter sqlite,$(BENCH_DB)),--sqlite,)

lint: install  ## ruff (lint + format check) and mypy strict on the package
	$(BIN)/ruff check retry_pipeline simulation tests bench celeryconfig.py flowerconfig.py
	$(BIN)/ruff format --check retry_pipeline simulation tests bench celeryconfig.py flowerconfig.py
	$(BIN)/mypy

format: install
	$(BIN)/ruff format retry_pipeline simulation tests bench celeryconfig.py flowerconfig.py
	$(BIN)/ruff check --fix retry_pipeline simulation tests bench celeryconfig.py flowerconfig.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.sqlite3*
