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

.PHONY: run test test-oldest env bench lint clean-results

env: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[run,test,local-mpi,analysis]"
	touch $(STAMP)

run: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/mpiexec -n $(NP) $(PY) -m dsi_mpi run $(CONFIG) $(SET)

test: $(STAMP)
	$(PY) -m pytest -q tests

# The lossless and backend tests again under the oldest transformers that setup.cfg admits (CI runs both).
OLDEST_TRANSFORMERS ?= transformers==5.17.0
OLD_VENV ?= .venv-oldest
$(OLD_VENV)/.installed: setup.cfg pyproject.toml
	test -x $(OLD_VENV)/bin/python || $(PYTHON) -m venv $(OLD_VENV)
	$(OLD_VENV)/bin/python -m pip install -q --upgrade pip
	$(OLD_VENV)/bin/python -m pip install -q "$(TORCH)" "$(OLDEST_TRANSFORMERS)"
	$(OLD_VENV)/bin/python -m pip install -q -e ".[run,test,local-mpi]" "$(OLDEST_TRANSFORMERS)"
	touch $@

test-oldest: $(OLD_VENV)/.installed
	$(OLD_VENV)/bin/python -c "import transformers; print('transformers', transformers.__version__)"
	$(OLD_VENV)/bin/python -m pytest -q tests/unit/test_runners.py tests/mpi/test_lossless.py tests/mpi/test_families.py

# Lint and format check (ruff, from the test extra); not applied to the tree or wired into CI yet.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean-results:
	rm -rf results
