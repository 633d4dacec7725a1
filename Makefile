# dsi-mpi: `make run` runs the main job on the embedded default models, `make test` runs the tests.
# Both create the virtual environment first if it is missing (torch pinned to the 2.13.0 CPU wheel).
VENV    ?= .venv
PYTHON  ?= python3
TORCH   ?= torch==2.13.0
NP      ?= 2
CONFIG  ?= inputs/configs/default.toml
SET     ?=
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.dsi-mpi-installed

.PHONY: run test env bench clean-results

env: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,local-mpi,analysis]"
	touch $(STAMP)

run: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/mpiexec -n $(NP) $(PY) -m dsi_mpi run $(CONFIG) $(SET)

test: $(STAMP)
	$(PY) -m pytest -q tests

clean-results:
	rm -rf results
