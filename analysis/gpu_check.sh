#!/usr/bin/env bash
# The device check in one command (at most ~8 minutes on one H200), from the working tree, nothing installed:
#   bash analysis/gpu_check.sh            # the paper's shapes on the GPU
#   bash analysis/gpu_check.sh --tiny     # tiny shapes on the CPU (what CI runs)
# Needs torch, transformers, mpi4py, h5py and an mpiexec (the venv's, else the one on PATH; Open MPI as root is
# handled). Prints a table and, as the last line, one JSON object. Extra flags go to analysis/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
exec timeout 480 "${PYTHON:-python3}" analysis/gpu_check.py "$@"
