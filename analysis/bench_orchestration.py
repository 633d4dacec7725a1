"""Lean orchestration: dsi-mpi's si against Hugging Face assisted generation, and the time outside forwards.

usage: python -m analysis.bench_orchestration [--config inputs/configs/benchmark.toml] [--runs 3]
                                              [--lookahead 4] [--np 2] [--out results/bench_orchestration]
                                              [--set KEY=VALUE ...]

si and hf_assisted run the same algorithm on the same pair (at a fixed k, HF's schedule "constant"); HF does
it in one process without messages. Each run is one job of nonsi, si, hf_assisted and dsi on the same
prompts. Per run it prints si's speed over hf_assisted (reporting.metrics.speedup, matched prompts) and, for
si and dsi, the wall time in which no rank ran a model forward (metrics: outside_forwards_share, and per
applied verification), then the median over the runs and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from analysis.jobs import ROOT, job_command, job_env
from dsi_mpi.io.results import read_results
from dsi_mpi.reporting import metrics as mt

ALGORITHMS = ["nonsi", "si", "hf_assisted", "dsi"]


def one_run(args, index: int) -> dict:
    out = Path(args.out) / f"run{index}.h5"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "decoding.algorithms": json.dumps(ALGORITHMS),
        "decoding.lookahead": args.lookahead,
        "output.path": json.dumps(str(out)),
        "output.overwrite": "true",
    } | dict(item.split("=", 1) for item in args.set)
    command = job_command(args.np, args.config, settings)
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT, env=job_env(), stdout=subprocess.DEVNULL)
    meta, records = read_results(str(out))
    by = mt.by_algorithm(records)
    figures = mt.compare(records, mt.job_shape(meta, records)["verifiers"])
    row = {"si_vs_hf_assisted": mt.speedup(by, "si", "hf_assisted"), "dsi_vs_si": mt.speedup(by, "dsi", "si")}
    for a in ("si", "dsi"):
        row[f"{a}_outside_share"] = figures[a]["outside_forwards_share"]
        row[f"{a}_outside_ms_per_verification"] = figures[a]["outside_forwards_ms_per_verification"]
    print(
        f"run {index}: si {row['si_vs_hf_assisted']:.3f}x hf_assisted, dsi {row['dsi_vs_si']:.3f}x si; outside "
        f"forwards: si {row['si_outside_share']:.1%} ({row['si_outside_ms_per_verification']:.2f} ms/verification), "
        f"dsi {row['dsi_outside_share']:.1%} ({row['dsi_outside_ms_per_verification']:.2f} ms/verification)",
        flush=True,
    )
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(usage=__doc__.split("\n\n")[1].strip(), description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="inputs/configs/benchmark.toml")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lookahead", type=int, default=4)
    parser.add_argument("--np", type=int, default=2)
    parser.add_argument("--out", default="results/bench_orchestration")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a config setting, as `run --set`"
    )
    args = parser.parse_args(argv)
    rows = [one_run(args, i) for i in range(args.runs)]
    median = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    print("median: " + ", ".join(f"{key} {value:.3f}" for key, value in median.items()))
    print(json.dumps({"lookahead": args.lookahead, "runs": rows, "median": median}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
