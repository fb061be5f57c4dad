# convserve: the same targets run locally and in CI (.ci/run calls `make test`).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Every install (here, CI and the Dockerfile) pins versions through constraints.txt.
PIP_INSTALL := $(PIP) install --quiet -c constraints.txt

.PHONY: help setup setup-service serve test lint fmt train-default lock clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Service only (no torch): enough to serve the committed models.
$(VENV)/.service-installed: pyproject.toml constraints.txt | $(PY)
	$(PIP_INSTALL) -e '.[service]'
	touch $@

# Everything: service, training (torch, torchvision, onnx) and the test tools.
$(VENV)/.all-installed: pyproject.toml constraints.txt | $(PY)
	$(PIP_INSTALL) -e '.[service,train,dev]'
	touch $@ $(VENV)/.service-installed

setup-service: $(VENV)/.service-installed
setup: $(VENV)/.all-installed

## help: list the targets
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)

## serve: set up the service and serve ./models on 127.0.0.1:8000
serve: setup-service
	$(PY) -m service

## lint: formatting, lint and strict typing
lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy training service

## test: set up everything, lint, then run the whole test suite
test: lint
	$(PY) -m pytest

fmt: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## train-default: retrain and export the committed default model (models/lenet5-fashion)
train-default: setup
	rm -rf runs/lenet5-fashion
	$(PY) -m training.train --arch lenet5 --dataset fashion-mnist --epochs 20 --augment flip \
		--label-smoothing 0.1 --threads 1 --out runs/lenet5-fashion
	$(PY) -m training.export --checkpoint runs/lenet5-fashion/best.pt --repository models \
		--name lenet5-fashion --version 1 --force

## lock: re-pin constraints.txt from the current .venv (after changing dependencies)
lock: setup
	$(PIP) freeze --exclude-editable | grep -v '^-e' > constraints.txt

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
