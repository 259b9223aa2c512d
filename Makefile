# Two commands for a fresh clone: `make train` and `make test` (see README).
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: train test test-fast lint dashboard-screenshot data install clean

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

# in as many worker processes as there are cores (pytest-xdist): most tests wait on subprocesses
test: data
	$(BIN)/python -m pytest -n auto

# ruff's lint and format checks (configured in pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# the edit-test loop: everything but the slow tier
test-fast: data
	$(BIN)/python -m pytest -n auto -m "not slow"

# docs/img/custom_scalars.png: a full configs/mnist.yaml fit, then TensorBoard's Custom Scalars page in headless Chromium;
# docs/img/regression_fit.png: seed 003's over-fitting run, then its last regression/fit figure on the Images page
dashboard-screenshot: data
	rm -rf logs/screenshot
	$(BIN)/mlplab fit --config configs/mnist.yaml --trainer.logger.init_args.save_dir=logs/screenshot --trainer.enable_progress_bar=false
	$(BIN)/python -m tools.dashboard logs/screenshot docs/img/custom_scalars.png custom_scalars
	rm -rf logs/screenshot_regression
	$(BIN)/mlplab fit --config configs/seeds/noisy_line_overfit.yaml --trainer.logger.init_args.save_dir=logs/screenshot_regression --trainer.enable_progress_bar=false
	$(BIN)/python -m tools.dashboard logs/screenshot_regression docs/img/regression_fit.png images:regression/fit

clean:
	rm -rf logs .pytest_cache
