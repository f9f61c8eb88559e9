# Two entry points (README): `make train` runs the main job, `make test` runs the whole suite.
# Both create or update the virtual environment first. TORCH_SPEC can be overridden for other machines.
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: train test bench env clean

$(STAMP): pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet $(TORCH_SPEC)
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/fastgrpo train

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -q tests
	$(VENV)/bin/pytest -q benchmarks --benchmark-disable  # benchmarks run once each, untimed: they must not rot

bench: $(STAMP)
	$(VENV)/bin/pytest benchmarks

env: $(STAMP)
	$(VENV)/bin/fastgrpo env

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .benchmarks
