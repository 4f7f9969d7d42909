# Quick start: `make run` (the default experiment) and `make test` (the test suite).
# Both create .venv on first use with the package and its test extra installed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: run test lint dry-run clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/snakemake --cores $(CORES)

dry-run: $(BIN)/.installed
	$(BIN)/snakemake -n

test: $(BIN)/.installed
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/python -m pytest -q

clean:
	rm -rf results .snakemake
