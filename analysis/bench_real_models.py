"""Real models, the speed issue's yardstick: nonsi, si, hf_assisted and dsi in one job on one thread per rank,
then plain decoding given every core of the node (a job of nonsi alone at threads = cores, each backend), so
that nobody can say dsi only wins by using more hardware.

usage: python -m analysis.bench_real_models [--config inputs/configs/smollm2.toml] [--np 2] [--limit 8]
                                            [--tokens 48] [--set section.key=value ...] [--out DIR]
       python -m analysis.bench_real_models --config inputs/configs/default.toml --algorithms nonsi si dsi

Every figure comes from dsi_mpi.reporting (analysis/benchmark.py's `measure`); every job runs the same prompts
with the same models and writes its own file under --out. The all-cores jobs use 2 ranks (rank 0 only waits:
its poller sleeps when ranks outnumber cores) and models.threads = the node's cores; the packed backend runs
oneDNN's multi-threaded products there (its own kernels are single-threaded), eager runs MKL's. Prints the main
job's summary, a table of dsi's speedups against each baseline, and whether every file wrote the same tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from analysis.benchmark import measure, run_job
from dsi_mpi.io.results import read_results
from dsi_mpi.reporting import metrics as mt
from dsi_mpi.reporting.report import summary_table

ALL_CORES_BACKENDS = ("packed", "eager")


def job(args, name: str, np: int, algorithms: list[str], extra: list[str]) -> tuple[dict, list[dict]]:
    out = Path(args.out) / f"{name}.h5"
    settings = [f"prompts.limit={args.limit}", f"decoding.max_new_tokens={args.tokens}", *args.set, *extra]
    run_job(argparse.Namespace(out=out, algorithms=algorithms, lookahead=0, set=settings, np=np, config=args.config))
    return read_results(str(out))


def same_tokens(files: dict[str, list[dict]]) -> list[str]:
    """The (file, algorithm, prompt) whose tokens differ from the main job's nonsi on that prompt."""
    reference = {r["prompt_index"]: r["tokens"] for r in files["main"] if r["algorithm"] == "nonsi"}
    return [
        f"{name}/{r['algorithm']}/{r['prompt_index']}"
        for name, records in files.items()
        for r in records
        if r["tokens"] != reference.get(r["prompt_index"], r["tokens"])
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(usage=__doc__.split("\n\n")[1].strip(), description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="inputs/configs/smollm2.toml")
    parser.add_argument("--np", type=int, default=2, help="ranks of the main job (1 drafter + verifiers)")
    parser.add_argument("--limit", type=int, default=8, help="prompts")
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per prompt")
    parser.add_argument("--algorithms", nargs="+", default=["nonsi", "si", "hf_assisted", "dsi"])
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)), help="threads of nonsi's job")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", default="results/bench_real_models")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    meta, records = job(args, "main", args.np, args.algorithms, ["models.threads=1"])
    files, figures = {"main": records}, {"main": measure(meta, records)}
    for backend in ALL_CORES_BACKENDS:
        name = f"nonsi_{args.cores}threads_{backend}"
        extra = [f"models.threads={args.cores}", f'models.backend="{backend}"']
        files[name] = job(args, name, 2, ["nonsi"], extra)[1]
    print(summary_table(records, meta))
    by = mt.by_algorithm(records)
    ms = {a: mt.compare(records, 1)[a]["ms_per_token"] for a in by}
    for name in files:
        if name != "main":
            ms[name] = mt.compare(files[name], 1)["nonsi"]["ms_per_token"]
    fastest = min((n for n in ms if n.startswith("nonsi_")), key=ms.get)
    print(f"\nms per token: {json.dumps({k: round(v, 2) for k, v in ms.items()})}")
    print(f"plain decoding on all {args.cores} cores: fastest {fastest} ({ms[fastest]:.2f} ms/token)")
    rows = {base: ms[base] / ms["dsi"] for base in [*by, fastest] if base != "dsi" and "dsi" in ms}
    for base, speedup in rows.items():
        print(f"dsi speedup vs {base:<26} {speedup:.3f}x")
    differing = same_tokens(files)
    print("tokens: every file and algorithm wrote nonsi's tokens" if not differing else f"tokens differ: {differing}")
    summary = {"figures": figures["main"], "ms_per_token": ms, "dsi_speedups": rows, "tokens_differ": differing}
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
