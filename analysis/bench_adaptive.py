"""Adaptive speculation against fixed lookaheads on real models (issue #13's real-model bars).

usage: python -m analysis.bench_adaptive [--config inputs/configs/smollm2.toml] [--drafter SPEC]
                                         [--lookaheads 1 2 3 4] [--np 2] [--limit 8] [--tokens 48]
                                         [--out results/bench_adaptive]

One job with adaptive lookahead (nonsi, si, dsi), then one job per fixed k (nonsi, dsi), all on the same
prompts and models. Jobs run one after another, so each dsi is compared with the nonsi of its own job:
adaptive dsi's speed relative to a fixed k's = (nonsi / dsi_adaptive) / (nonsi / dsi_k), every speedup by
reporting.metrics.speedup (matched prompts). Prints one line per job and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from analysis.jobs import ROOT, job_command, job_env
from dsi_mpi.io.records import Event
from dsi_mpi.io.results import read_results
from dsi_mpi.reporting import metrics as mt


def run(args, name: str, lookahead: str, algorithms: list[str]) -> dict:
    out = Path(args.out) / f"{name}.h5"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "decoding.lookahead": lookahead,
        "decoding.algorithms": json.dumps(algorithms),
        "decoding.max_new_tokens": args.tokens,
        "prompts.limit": args.limit,
        "output.path": json.dumps(str(out)),
        "output.overwrite": "true",
    }
    if args.drafter:
        settings["models.drafter"] = json.dumps(args.drafter)
    command = job_command(args.np, args.config, settings)
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT, env=job_env(), stdout=subprocess.DEVNULL)
    _, records = read_results(str(out))
    by = mt.by_algorithm(records)
    row = {a: mt.speedup(by, a, "nonsi") for a in algorithms if a != "nonsi"}
    chosen = [int(e["value"]) for r in by["dsi"] for e in r["events"] if e["kind"] == Event.LOOKAHEAD]
    row["dsi_k_changes"] = chosen[:40]
    row["dsi_acceptance"] = mt.acceptance(by["dsi"])
    speeds = ", ".join(f"{a} {row[a]:.3f}x nonsi" for a in algorithms if a != "nonsi")
    print(f"{name}: {speeds}, dsi acceptance {row['dsi_acceptance']:.3f}", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(usage=__doc__.split("\n\n")[1].strip(), description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="inputs/configs/smollm2.toml")
    parser.add_argument("--drafter", default="", help="models.drafter (default: the config's)")
    parser.add_argument("--lookaheads", type=int, nargs="*", default=[1, 2, 3, 4])
    parser.add_argument("--np", type=int, default=2)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--out", default="results/bench_adaptive")
    args = parser.parse_args(argv)
    rows = {"adaptive": run(args, "adaptive", '"adaptive"', ["nonsi", "si", "dsi"])}
    for k in args.lookaheads:
        rows[f"k{k}"] = run(args, f"k{k}", str(k), ["nonsi", "dsi"])
    best = max(((r["dsi"], name) for name, r in rows.items() if name != "adaptive"), default=(float("nan"), None))
    summary = {
        "drafter": args.drafter or "(config)",
        "ranks": args.np,
        "adaptive_dsi_vs_nonsi": rows["adaptive"]["dsi"],
        "adaptive_dsi_vs_si": rows["adaptive"]["dsi"] / rows["adaptive"]["si"],
        "best_fixed": best[1],
        "adaptive_vs_best_fixed_dsi": rows["adaptive"]["dsi"] / best[0],
        "jobs": rows,
    }
    print(json.dumps(summary, indent=1))
    Path(args.out, "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
