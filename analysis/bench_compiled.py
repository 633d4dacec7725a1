"""CPU benchmark of the compiled backend (models.backend = "compiled") against eager, on the default pair.

usage: PYTHONPATH=. python analysis/bench_compiled.py [--rounds 5] [--steps 40] [--jobs] [--json F]

1. Per-token decode latency of the default target (one-token forwards after the first prompt), eager and
   compiled at several cancel-check granularities (compile_segments 1 = whole model, 2, 3, and one per layer),
   all in this process and interleaved round by round; ratios to eager from the same rounds. Compile and
   warm-up seconds are printed apart: they are load-time costs.
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

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "inputs/models/target"


def _fresh_target():
    """A model of its own per runner: a compiled runner's cancel hooks must not show up in another's graphs."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(TARGET, dtype="float32").eval()


def latency(rounds: int, steps: int, segment_options: list[int]) -> dict:
    import torch

    from dsi_mpi.backends.compiled import CompiledRunner
    from dsi_mpi.backends.hf import HFRunner

    torch.set_num_threads(1)
    runners = {"eager": HFRunner(_fresh_target())}
    compile_cost = {}
    for segments in segment_options:
        start = time.perf_counter()
        runner = CompiledRunner(_fresh_target(), capacity=256, segments=segments, max_bucket=1)
        runners[f"compiled_s{runner.segments}"] = runner
        compile_cost[f"compiled_s{runner.segments}"] = dict(
            compile_s=runner.compile_info["compile_s"],
            warmup_s=runner.compile_info["warmup_s"],
            load_s=round(time.perf_counter() - start, 1),
        )
        print(f"compiled, {runner.segments} segment(s): {compile_cost[f'compiled_s{runner.segments}']}", flush=True)
    prompt = [int(t) for t in torch.randint(1, 2000, (24,), generator=torch.Generator().manual_seed(0))]
    times = {name: [] for name in runners}
    tokens = {}
    order = list(runners)
    for r in range(rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:  # rotate who goes first
            runner = runners[name]
            runner.reset()
            out = [int(runner.greedy(prompt, 1)[0])]
            start = time.perf_counter()
            for _ in range(steps):
                out.append(int(runner.greedy(out[-1:], 1)[0]))
            times[name].append((time.perf_counter() - start) / steps * 1e3)
            tokens[name] = out
    median = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
    return {
        "ms_per_token_median": median,
        "ratio_to_eager": {name: median[name] / median["eager"] for name in median},
        "same_tokens_as_eager": {name: tokens[name] == tokens["eager"] for name in tokens},
        "compile": compile_cost,
        "rounds": rounds,
        "steps": steps,
    }


def run_job(backend: str, out: Path, extra: list[str]) -> float:
    """`make run`'s command with models.backend set; returns its wall seconds (load and compile included)."""
    mpiexec = os.environ.get("MPIEXEC", str(Path(sys.executable).parent / "mpiexec"))
    command = [mpiexec, "-n", "2", sys.executable, "-m", "dsi_mpi", "run", "inputs/configs/default.toml"]
    command += ["--set", f'models.backend="{backend}"', "--set", f"output.path={json.dumps(str(out))}", *extra]
    print("+", " ".join(command), flush=True)
    start = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    subprocess.run(command, check=True, cwd=ROOT, env=env)
    return time.perf_counter() - start


def jobs(extra: list[str]) -> dict:
    from dsi_mpi.io.results import read_results
    from dsi_mpi.reporting import metrics as mt

    result, records = {}, {}
    for backend in ("eager", "compiled"):
        out = ROOT / f"results/bench_compiled_{backend}.h5"
        result[f"{backend}_job_s"] = round(run_job(backend, out, extra), 1)
        meta, records[backend] = read_results(str(out))
        result[f"{backend}_backends"] = meta.get("backends")
        result[backend] = {a: m["ms_per_token"] for a, m in mt.compare(records[backend], 1).items()}
    by = {b: {(r["algorithm"], r["prompt_index"]): list(r["tokens"]) for r in records[b]} for b in records}
    result["same_tokens"] = by["eager"] == by["compiled"]
    result["compiled_over_eager"] = {a: result["compiled"][a] / result["eager"][a] for a in result["eager"]}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--segments", default="1,2,3,6", help="compile_segments values to measure")
    parser.add_argument("--jobs", action="store_true", help="also run the main job eager and compiled")
    parser.add_argument("--set", action="append", default=[], help="extra --set for the jobs")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    report = {"latency": latency(args.rounds, args.steps, [int(s) for s in args.segments.split(",")])}
    if args.jobs:
        report["jobs"] = jobs([item for s in args.set for item in ("--set", s)])
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
