# Two entry points for newcomers: `make repro` (the whole pipeline on the embedded default data)
# and `make test`. Both create the virtual environment when it is missing and are safe to re-run.
VENV    ?= .venv
PY      := $(VENV)/bin/python
UV_VERSION := 0.13.9
STAMP   := $(VENV)/.installed
# dvc.yaml's `python -m stages.X` must find the project's interpreter without an activated venv.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1

.PHONY: install repro test lint bench clean-venv

install: $(STAMP)

# pyproject.toml pins the top-level packages, constraints.txt the whole tree: no backtracking.
# --compile-bytecode: every stage is a fresh process; without .pyc files (PYTHONDONTWRITEBYTECODE is common
# on CI) each one recompiles torch, mlflow and dvc, 3 s of imports become 10-15 s.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3.11 -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --python $(PY) --compile-bytecode -c constraints.txt -e '.[dev,lite0]'
	touch $@

repro: install
	$(VENV)/bin/dvc repro

test: install
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check .

# The self-contained benchmarks (synthetic inputs, minutes each), one after another; each rewrites its
# benchmarks/results/<name>.md. `$(PY) -m benchmarks.run_all --list` names them all, with the studies left out
# (hours, dvc repro outputs, hand-written findings); `$(PY) -m benchmarks.run_all --only NAME ...` runs any.
bench: install
	$(PY) -m benchmarks.run_all

clean-venv:
	rm -rf $(VENV)
