# Quick start: `make run` (the default experiment, ending with its report) and `make test`
# (the test suite). Both create .venv on first use with the package and its test and
# report extras installed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: run test test-fast typecheck test-slurm dry-run benchmark time-workflow results-doc clean \
	clean-all

# --no-compile: byte-compiling every installed module (torch's thousands) costs over a
# minute on 2 cores; the modules the jobs import compile on first use instead, as Python
# does by default. So that they are compiled once and not in every job, the recipes run
# without PYTHONDONTWRITEBYTECODE (set on some machines, this project's among them).
unexport PYTHONDONTWRITEBYTECODE
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e '.[test,report]'
	touch $@

# Ends with the report: results/default/report/report.html (papermill, then nbconvert).
run: $(BIN)/.installed
	$(BIN)/snakemake --cores $(CORES)
	@echo "The report: $(CURDIR)/results/default/report/report.html"

dry-run: $(BIN)/.installed
	$(BIN)/snakemake -n

# Lint, format, type check, then every test (the workflow tests share one tiny pipeline run
# per session, tests/conftest.py); the slowest tests are listed at the end.
test: $(BIN)/.installed
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/ruff format --check src tests scripts benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q --durations=15

# The unit tests only (no Snakemake run, no real-data folder, nothing marked slow: subprocess
# and training-heavy tests), on both cores with one torch thread each (pytest-xdist): 44 s
# on 2 cores. `make test` runs every test.
test-fast: $(BIN)/.installed
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 -m "not workflow and not slow and not slurm and not realdata"

typecheck: $(BIN)/.installed
	$(BIN)/mypy

# profiles/slurm on a real one-node SLURM on localhost (root; installs slurm-wlm and munge
# with apt-get when missing; stops its daemons at the end). CI runs it after `test`.
test-slurm: $(BIN)/.installed
	PYTHON=$(BIN)/python bash tests/slurm/run_slurm_test.sh

# The meta-step benchmark against higher and a per-task loop (docs/benchmarks.md);
# e.g. BENCH_ARGS="--device cpu --settings 5w1s-32t-1step-second" to run part of it.
benchmark: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test,benchmark]'
	mkdir -p benchmarks/out
	$(BIN)/python benchmarks/meta_step.py $(BENCH_ARGS) --out benchmarks/out/meta_step.json

# The default workflow timed from clean results in a scratch copy (your results/ untouched):
# wall, user and sys of the whole run and per rule (benchmarks/workflow_time.py; docs/
# benchmarks.md); e.g. TIME_ARGS="--cores 4 --json benchmarks/out/workflow.json".
time-workflow: $(BIN)/.installed
	$(BIN)/python benchmarks/workflow_time.py $(TIME_ARGS)

# The printed numbers of the docs, written from results trees instead of typed: the `default`
# blocks of docs/results.md (accuracy, verdicts, like for like) and README.md (accuracy only)
# from results/default (config.yaml's experiment), each with the CPU model, torch and commit
# that made them. RESULTS_OMNIGLOT=results/omniglot-small (the tree of
# config/omniglot-small.yaml) also writes docs/results.md's `omniglot-small` block. Run it
# after `make run`; it prints what each block replaced.
RESULTS ?= results/default
RESULTS_OMNIGLOT ?=
results-doc: $(BIN)/.installed
	$(BIN)/mamlscope results-doc $(RESULTS) --config config.yaml --doc docs/results.md --name default
	$(BIN)/mamlscope results-doc $(RESULTS) --config config.yaml --doc README.md --name default \
		--only accuracy
	$(if $(RESULTS_OMNIGLOT),$(BIN)/mamlscope results-doc $(RESULTS_OMNIGLOT) \
		--config config/omniglot-small.yaml --doc docs/results.md --name omniglot-small)

# `make clean` removes one experiment's results (EXPERIMENT=omniglot-small for another) and
# leaves the others; `make clean-all` removes every experiment and Snakemake's records.
EXPERIMENT ?= default
clean:
	rm -rf results/$(EXPERIMENT)

clean-all:
	rm -rf results .snakemake
