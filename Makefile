# The two commands of the README. Both build .venv on first use.
#   make reproduce   the whole paper DAG on the embedded default (CPU), then reports/
#   make test        the whole test suite (unit tests and the end-to-end `slow` DAG test)
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: reproduce test lint venv clean-results

venv: $(STAMP)

# requirements.lock pins every package of the tested stack (pip freeze of a clean install).
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

reproduce: $(STAMP)
	$(VENV)/bin/snakemake --profile workflows/profiles/default

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check hmsa tests benchmarks

# Remove what the pipelines made (data, results, runs, logs, generated reports of every pipeline config,
# MLflow db, DVC's plot pages) to start over. Committed files under reports/ (benchmarks/) stay.
clean-results:
	rm -rf results runs logs data/embedded mlflow.db .hmsa .snakemake dvc_plots \
	  reports/table*.md reports/table*.csv reports/table*.tex reports/claims.md reports/claims.csv \
	  reports/figures reports/README.md reports/index.html reports/paper reports/embedded-3seeds
