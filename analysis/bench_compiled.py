"""CPU benchmark of the compiled backend (models.backend = "compiled") against eager, on the default pair.

usage: python -m analysis.bench_compiled [--rounds 5] [--steps 40] [--jobs] [--json F]

1. Per-token decode latency of the default target (one-token forwards after a 24-token prompt), eager and
   compiled, interleaved round by round in one process, one process per cancel-check granularity
   (compile_segments 1 = whole model, 2, 3, and 6 = one per layer); ratios to eager from the same rounds.
   Compile and warm-up seconds are printed apart: they are load-time costs.
2. --jobs: the main job (`make run`'s command: mpiexec -n 2 ... run inputs/configs/default.toml) twice, eager
   and compiled, each algorithm's ms/token from the results files (compile excluded: it happens at load),
   and whether every prompt's tokens are the same in both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from analysis.jobs import ROOT, job_command, job_env

TARGET = ROOT / "inputs/models/target"


def _fresh_target():
    """A model of its own per runner: a compiled runner's cancel hooks must not show up in another's graphs."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(TARGET, dtype="float32").eval()


def latency(rounds: int, steps: int, segments: int) -> dict:
    """Eager and ONE compiled runner in this process (several compiled runners in one process share code objects,
    and each call would then also evaluate the others' guards), alternating round by round."""
    import torch

    from dsi_mpi.backends.compiled import CompiledRunner
    from dsi_mpi.backends.hf import HFRunner

    torch.set_num_threads(1)
    start = time.perf_counter()
    runners = {"eager": HFRunner(_fresh_target())}
    runners["compiled"] = CompiledRunner(_fresh_target(), capacity=256, segments=segments, max_bucket=1)
    info = runners["compiled"].compile_info
    cost = dict(compile_s=info["compile_s"], warmup_s=info["warmup_s"], load_s=round(time.perf_counter() - start, 1))
    prompt = [int(t) for t in torch.randint(1, 2000, (24,), generator=torch.Generator().manual_seed(0))]
    times = {name: [] for name in runners}
    tokens = {}
    for r in range(rounds):
        for name in ["eager", "compiled"] if r % 2 == 0 else ["compiled", "eager"]:  # alternate who goes first
            runner = runners[name]
            runner.reset()
            out = [int(runner.greedy(prompt, 1)[0])]
            t0 = time.perf_counter()
            for _ in range(steps):
                out.append(int(runner.greedy(out[-1:], 1)[0]))
            times[name].append((time.perf_counter() - t0) / steps * 1e3)
            tokens[name] = out
    median = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
    ratios = sorted(c / e for c, e in zip(times["compiled"], times["eager"]))
    return {
        "segments": runners["compiled"].segments,
        "eager_ms": median["eager"],
        "compiled_ms": median["compiled"],
        "compiled_over_eager_median_of_rounds": ratios[len(ratios) // 2],
        "same_tokens_as_eager": tokens["compiled"] == tokens["eager"],
        **cost,
    }


def latency_all(rounds: int, steps: int, segment_options: list[int]) -> list[dict]:
    """One process per granularity (see `latency`)."""
    rows = []
    for segments in segment_options:
        command = [sys.executable, "-m", "analysis.bench_compiled", "--one", str(segments)]
        command += ["--rounds", str(rounds), "--steps", str(steps)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        out = subprocess.run(command, check=True, cwd=ROOT, env=env, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run_job(backend: str, out: Path, extra: list[str]) -> float:
    """`make run`'s command with models.backend set; returns its wall seconds (load and compile included)."""
    settings = {"models.backend": f'"{backend}"', "output.path": json.dumps(str(out))}
    command = job_command(2, "inputs/configs/default.toml", settings) + extra
    print("+", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, env=job_env(threads=1))
    return time.perf_counter() - start


def jobs(extra: list[str]) -> dict:
    from dsi_mpi.io.results import read_results
    from dsi_mpi.reporting import metrics as mt

    result, records = {}, {}
    for backend in ("eager", "compiled"):
        out = ROOT / f"results/bench_compiled_{backend}.h5"
        result[f"{backend}_job_s"] = round(run_job(backend, out, extra), 1)
        meta, records[backend] = read_results(str(out))
        backends = meta.get("backends") or "[]"
        result[f"{backend}_backends"] = json.loads(backends) if isinstance(backends, str) else backends
        result[backend] = {a: m["ms_per_token"] for a, m in mt.compare(records[backend], 1).items()}
    by = {b: {(r["algorithm"], r["prompt_index"]): list(r["tokens"]) for r in records[b]} for b in records}
    result["same_tokens"] = by["eager"] == by["compiled"]
    result["compiled_over_eager"] = {a: result["compiled"][a] / result["eager"][a] for a in result["eager"]}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--segments", default="1,2,3,6", help='compile_segments values to measure ("": none)')
    parser.add_argument("--jobs", action="store_true", help="also run the main job eager and compiled")
    parser.add_argument("--set", action="append", default=[], help="extra --set for the jobs")
    parser.add_argument("--json", default="")
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # one granularity, this process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(latency(args.rounds, args.steps, args.one)))
        return 0
    options = [int(s) for s in args.segments.split(",") if s]
    report = {"latency": latency_all(args.rounds, args.steps, options)} if options else {}
    if args.jobs:
        report["jobs"] = jobs([item for s in args.set for item in ("--set", s)])
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
