#!/usr/bin/env bash
# The device check in one command, at most 8 minutes, from the working tree with nothing installed:
#   bash analysis/gpu_check.sh [--out DIR]          # on the GPU machine (one GPU, 16 cores)
#   bash analysis/gpu_check.sh --tiny [--out DIR]   # tiny shapes on a CPU (what the tests run)
# 1. analysis/gpu_check.py (GPU_BUDGET s, default 330): paper shapes eager vs compiled against the HBM floor,
#    nonsi / si / dsi with EMULATED ACCEPTANCE over compiled forwards;
# 2. analysis/cpu_parallelism.py (CPU_BUDGET s, default 130): real speculation parallelism on the node's cores.
# Each writes its JSON after every phase under DIR (default $OUT, else results/gpu_check) and stops its own jobs
# at its budget; `timeout` is only the last resort. Other flags: run the two scripts directly.
set -uo pipefail
cd "$(dirname "$0")/.."
tiny=() out="${OUT:-results/gpu_check}"
while [ $# -gt 0 ]; do
    case "$1" in
        --tiny) tiny=(--tiny); shift ;;
        --out) out="$2"; shift 2 ;;
        *) echo "gpu_check.sh: unknown argument $1 (usage: bash analysis/gpu_check.sh [--tiny] [--out DIR])" >&2; exit 2 ;;
    esac
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
py="${PYTHON:-python3}" gpu_budget="${GPU_BUDGET:-330}" cpu_budget="${CPU_BUDGET:-130}"
mkdir -p "$out"
timeout $((gpu_budget + 40)) "$py" -m analysis.gpu_check "${tiny[@]}" --budget "$gpu_budget" --out "$out"
gpu_status=$?
timeout $((cpu_budget + 30)) "$py" -m analysis.cpu_parallelism "${tiny[@]}" --budget "$cpu_budget" --out "$out"
cpu_status=$?
echo "gpu_check.py exit $gpu_status, cpu_parallelism.py exit $cpu_status; outputs in $out" >&2
exit $((gpu_status || cpu_status))
