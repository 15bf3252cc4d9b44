# Two entry points for a fresh machine: `make demo` and `make test` (each sets itself up).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,plots]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m speakerid demo

test: $(STAMP)
	$(PY) -m ruff check speakerid tests bench migrations data
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

lint: $(STAMP)
	$(PY) -m ruff check speakerid tests bench migrations data

clean:
	rm -rf $(VENV) build *.egg-info
