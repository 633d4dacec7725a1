#!/usr/bin/env bash
# Issue #12's bars on the real SmolLM2-135M-Instruct target, each a single job running every algorithm on the same
# prompts (ratios only; the machine is shared). Needs `make smollm2` first (target and distilled drafter in the cache,
# linked under inputs/models/). Usage: bash analysis/bench_smollm2.sh [PROMPTS] [NEW_TOKENS]   (default 8 x 48)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LIMIT=${1:-8}
NEW=${2:-48}
OUT=results/bench_smollm2
mkdir -p "$OUT"
common=(--config inputs/configs/smollm2.toml --set "prompts.limit=$LIMIT" --set "decoding.max_new_tokens=$NEW")
bench() {  # name, ranks, drafter, algorithms...
  local name=$1 np=$2 drafter=$3; shift 3
  echo "=== $name: $np ranks, drafter $drafter"
  "$PY" -m analysis.benchmark "${common[@]}" --np "$np" --set "models.drafter=\"$drafter\"" --algorithms "$@" \
    --out "$OUT/$name.h5" --json "$OUT/$name.json"
}
bench distilled_2ranks 2 inputs/models/smollm2-drafter nonsi si hf_assisted dsi
bench ngram_3ranks 3 ngram nonsi si hf_prompt_lookup dsi
bench ngram_2ranks 2 ngram nonsi si hf_prompt_lookup dsi
bench truncated2_2ranks 2 truncated:layers=2 nonsi si dsi
