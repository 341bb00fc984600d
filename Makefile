# Two commands do everything on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK_VENV := .venv-lock

.PHONY: help install run test lint format lock clean-outputs
.DEFAULT_GOAL := install

## help: this list of targets
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)

## install: the virtual environment .venv, with the locked versions and the native CPU loops
install: $(STAMP)

# pip (not uv/poetry): on these machines pip takes torch/torchvision from local disk.
# constraints.txt pins every package to the version the tests pass with (see `make lock`).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -m src.native
	touch $(STAMP)

# Refresh constraints.txt: the newest versions pyproject.toml allows, resolved in a fresh venv
# (not the one in use). Then run `make test` (it reinstalls from the new lock) and commit both.
## lock: refresh constraints.txt from a fresh venv (then make test, and commit both)
lock:
	rm -rf $(LOCK_VENV)
	$(PY) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/pip install --quiet -e ".[dev]"
	{ echo "# The exact versions the test suite passes with (pip freeze of a venv with \`pip install -e .[dev]\`, minus"; \
	  echo "# this project). \`make install\` installs with \`-c constraints.txt\`; \`make lock\` rewrites this file."; \
	  $(LOCK_VENV)/bin/pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(LOCK_VENV)
	@echo "constraints.txt refreshed: run make test, then commit it"

# The default experiment: CSRAE with a learnable 10-component GMM prior on sklearn's digits.
## run: one experiment, `make run ARGS="model=vae prior=vamp"` (default: CSRAE, GMM prior, digits)
run: install
	$(BIN)/python -m src.run $(ARGS)

# Test files run in parallel, one file per worker at a time (its module fixtures are built once);
# TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= auto
## test: the test suite (TEST_WORKERS=0: in this process; PYTEST_ARGS: more pytest arguments)
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# ruff, configured in pyproject.toml: `make lint` checks (CI runs it), `make format` rewrites.
## lint: ruff check and ruff format --check (as CI and pre-commit run them)
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## format: ruff fixes and formats the code in place
format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## clean-outputs: delete outputs/runs, multirun, reports and optuna
clean-outputs:
	rm -rf outputs/runs outputs/multirun outputs/reports outputs/optuna
