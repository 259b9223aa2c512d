# Two commands for a fresh clone: `make train` and `make test` (see README).
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: train test data install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

data: $(STAMP)
	$(BIN)/mlplab data download --dataset all

train: data
	$(BIN)/mlplab fit --config configs/mnist.yaml

test: data
	$(BIN)/python -m pytest

clean:
	rm -rf logs .pytest_cache
