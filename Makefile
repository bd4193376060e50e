# stn_jax: `make train` and `make test` work on a fresh machine with only python3 >= 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is the reference of the parity tests and benchmarks; this exact pin is a CPU wheel on the project's machines.
TORCH := torch==2.13.0
INSTALLED := $(VENV)/.installed

.PHONY: install test lint format bench clean data train docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): $(BIN)/python setup.cfg pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]" "$(TORCH)"
	# The CPU kernels (sampler, convolutions; C++ through jax.ffi) with the system compiler; without one, XLA runs them.
	$(BIN)/python -c "from stn_jax.spatial import cpu_kernels; raise SystemExit(cpu_kernels.main())"
	touch $@

install: $(INSTALLED)

# The seed's experiment (configs/default.py) into runs/default; gets MNIST on first use; resumes if interrupted.
train: $(INSTALLED)
	$(BIN)/python -m stn_jax.main --config=configs/default.py --workdir=runs/default

test: $(INSTALLED)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q tests

# The documentation site: HTML into docs/_build/html, warnings as errors, its notebooks executed on CPU (offline).
docs: $(INSTALLED)
	$(BIN)/python -m sphinx -b html -W --keep-going -q docs docs/_build/html
	@echo "docs: open docs/_build/html/index.html"

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(INSTALLED)
	$(BIN)/python experiments/benchmark_sampler.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache docs/_build docs/_autosummary

data: $(INSTALLED)
	$(BIN)/python -c "import logging; logging.basicConfig(level=logging.INFO); from stn_jax.data import load_mnist; load_mnist()"
