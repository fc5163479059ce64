# `make demo` and `make test` work from a fresh clone: they create .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: demo test test-slow test-gpu lint typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/datakit demo --out demo-out

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow"

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m "gpu"

lint: $(STAMP)
	$(BIN)/ruff check datakit converters training tests bench
	$(BIN)/ruff format --check datakit converters training tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo-out .pytest_cache
