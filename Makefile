# Two entry points for a fresh machine: `make demo` and `make test` (each sets itself up).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all test-avx2 lint bench clean wheel

# The distribution was called speakerid, a name another project owns on PyPI: a .venv made
# before the rename drops it first (a no-op warning otherwise).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip uninstall --quiet --disable-pip-version-check -y speakerid
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,plots]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m speakerid demo

test: $(STAMP)
	$(PY) -m ruff check speakerid tests bench migrations data
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

# The suite on the code paths of an AVX2-only CPU (AMD EPYC, older Xeons), on any x86-64 machine:
# PyTorch's kernels, oneDNN and FAISS limited to AVX2 (ONNX Runtime keeps its own dispatch).
test-avx2: $(STAMP)
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 FAISS_SIMD_LEVEL=AVX2 $(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check speakerid tests bench migrations data

# dist/speakerid_eres2net-VERSION-py3-none-any.whl (README, "Install"); build/ goes first so
# that no module left there by an earlier build ends up in the wheel.
wheel: $(STAMP)
	rm -rf build
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation . -w dist

clean:
	rm -rf $(VENV) build dist *.egg-info
