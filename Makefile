# Two commands do everything on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench clean-outputs

install: $(STAMP)

# pip (not uv/poetry): on these machines pip takes torch/torchvision from local disk.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The default experiment: CSRAE with a learnable 10-component GMM prior on sklearn's digits.
run: install
	$(BIN)/python -m src.run $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean-outputs:
	rm -rf outputs/runs outputs/multirun outputs/reports outputs/optuna
