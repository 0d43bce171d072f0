# hpcdiff developer entry points. `make test` is the README's test command: it creates .venv,
# installs the pinned dependencies and the package, and runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REQS := requirements/torch-cpu.txt requirements/test.txt setup.py

.PHONY: venv test quickstart lint format bench clean

venv: $(STAMP)

$(STAMP): $(REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/torch-cpu.txt
	$(PY) -m pip install --quiet -r requirements/torch-cpu.txt -r requirements/test.txt
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check hpcdiff tests benchmarks
	$(PY) -m mypy   # type check hpcdiff/ (settings and strictness: [tool.mypy] in pyproject.toml)
	scripts/ci_services.sh start   # Debian Open MPI + a one-node Slurm for the launcher tests
	scripts/ci_nsight.sh install   # Debian nsight-systems (contrib + non-free) for tests/profiling
	# tests/cluster brings up scripts/ci_cluster.sh (2 namespace nodes, root only) and takes
	# it down itself; the `down` here also cleans up after an interrupted pytest
	$(PY) -m pytest -n 2 --dist loadfile; rc=$$?; [ "$$(id -u)" != 0 ] || scripts/ci_cluster.sh down; exit $$rc

quickstart: $(STAMP)
	VENV=$(VENV) scripts/quickstart.sh $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check hpcdiff tests benchmarks
	$(VENV)/bin/ruff format --check hpcdiff tests benchmarks
	$(PY) -m mypy

format: $(STAMP)
	$(VENV)/bin/ruff format hpcdiff tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_sampler_overhead.py
	$(PY) benchmarks/bench_nvtx_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info runs/quickstart data/quickstart
