# Two entry points: `make demo` (train + calibrate a bijection wind tunnel on CPU, HTML report)
# and `make test` (the test suite). Both create and use a local virtual environment in .venv.
# TORCH_SPEC pins the CPU wheel on the project machines; override it elsewhere (e.g. TORCH_SPEC=torch).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.geoprobe-installed

.PHONY: demo test lint venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m geoprobe demo --out runs/demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check geoprobe tests benchmarks

clean:
	rm -rf $(VENV) runs
