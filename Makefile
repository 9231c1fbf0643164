# Two commands do all setup on a fresh machine: `make run` and `make test`.
# The venv gets the CPU build of torch pinned below; on a GPU machine install your CUDA torch into
# .venv first (see README), `make` keeps whatever torch is already there.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test lint format run clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,app]"
	sh scripts/install_browser.sh
	touch $(STAMP)

install: $(STAMP)

test: lint
	$(PY) -m pytest -q

# Formatting and lint (ruff, configured in pyproject.toml); part of `make test`. `make format` fixes both.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check src tests scripts && $(VENV)/bin/ruff check src tests scripts

format: $(STAMP)
	$(VENV)/bin/ruff format src tests scripts && $(VENV)/bin/ruff check --fix src tests scripts

run: $(STAMP)
	OMP_NUM_THREADS=2 $(VENV)/bin/unoflux demo --out outputs/demo

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
