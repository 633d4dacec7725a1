"""Speed benchmark: nonsi, si, hf_assisted and dsi in ONE job on the same prompts, then the ratios.

usage: python -m analysis.benchmark [--config inputs/configs/benchmark.toml] [--np 2] [--lookahead 5]
                                    [--set section.key=value ...] [--out results/benchmark.h5] [--json F]
       python -m analysis.benchmark --results results/benchmark.h5     (analyse an existing file only)

Prints per-token latency of every algorithm, the ratios dsi/si, dsi/nonsi, dsi/hf_assisted (as
speedups: baseline time / dsi time, above 1 = dsi faster), and the measured inputs of the paper's time
model: target and drafter per-token latency and c, verification forward time, acceptance rate. It then
feeds those measurements to the simulator and prints the dsi/si ratio the model predicts next to the
measured one, plus KV-cache reuse and how long verifiers stayed busy on stale work after rejections.
On a GPU node: --set models.device="cuda" --set models.dtype="bfloat16" --np 1+verifiers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from analysis.jobs import ROOT, job_command, job_env
from dsi_mpi.reporting import metrics as mt
from dsi_mpi.reporting import time_model as tm

ALGORITHMS = ["nonsi", "si", "hf_assisted", "dsi"]  # with --set models.drafter='"ngram"': hf_prompt_lookup
BASELINES = ("si", "nonsi", "hf_assisted", "hf_prompt_lookup")


def run_job(args) -> Path:
    out = Path(args.out)
    settings = {
        "output.path": json.dumps(str(out)),
        "output.overwrite": "true",
        "decoding.algorithms": json.dumps(args.algorithms),
    }
    if args.lookahead:
        settings["decoding.lookahead"] = args.lookahead
    settings.update(item.split("=", 1) for item in args.set)
    command = job_command(args.np, args.config, settings)
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=job_env(), cwd=ROOT)
    return out


def measure(meta: dict, records: list[dict]) -> dict:
    """The figures the speed issue asks for, the time model's inputs and its predictions at this file's own
    setting, all from dsi_mpi.reporting.metrics."""
    by = mt.by_algorithm(records)
    figures = mt.compare(records, mt.job_shape(meta, records)["verifiers"])
    m = {"ms_per_token": {a: f["ms_per_token"] for a, f in figures.items()}, "prompts": len(by.get("dsi", []))}
    for base in BASELINES:
        if base in by and "dsi" in by:
            m[f"dsi_speedup_vs_{base}"] = mt.speedup(by, "dsi", base)
    for a in ("si", "dsi"):
        if a in figures:
            m[f"acceptance_{a}"] = figures[a]["acceptance"]
    predicted = tm.predictions(meta, records)
    if predicted:
        m.update(predicted["inputs"], setting=predicted["setting"])
        if "si" in by and "dsi" in by:
            m["predicted_dsi_speedup_vs_si"] = predicted["speedup"]["dsi_vs_si"]
            m["predicted_dsi_speedup_vs_nonsi"] = predicted["speedup"]["dsi_vs_nonsi"]
    dsi = by.get("dsi", [])
    m.update(mt.cache_reuse(dsi))
    stale = mt.stale_work(dsi)
    m.update(
        cancellations=stale["cancellations"],
        aborted_fraction=stale["aborted_fraction"],
        median_busy_after_reject_s=stale["median_busy_after_reject_s"],
        tasks_stale=figures.get("dsi", {}).get("tasks_stale", 0),
        tasks_sent=figures.get("dsi", {}).get("tasks_sent", 0),
    )
    return m


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(usage=__doc__.split("\n\n")[1].strip(), description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="inputs/configs/benchmark.toml")
    parser.add_argument("--np", type=int, default=2, help="MPI ranks: 1 drafter + verifiers")
    parser.add_argument("--lookahead", type=int, default=0)
    parser.add_argument("--algorithms", nargs="+", default=ALGORITHMS)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", default="results/benchmark.h5")
    parser.add_argument("--results", help="analyse this file instead of running a job")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    import tomllib

    from dsi_mpi.io.config import validate
    from dsi_mpi.io.results import read_results
    from dsi_mpi.reporting.report import summary_table

    path = Path(args.results) if args.results else run_job(args)
    meta, records = read_results(str(path))
    cfg = validate(tomllib.loads(meta["config_toml"]))
    m = measure(meta, records)
    m.update(results=str(path), git_commit=meta.get("git_commit"))
    setting = m.get("setting") or tm.run_setting(meta, records)
    print(summary_table(records, meta))
    print()
    print(
        f"lookahead {setting['lookahead']}, dsi verifiers {setting['verifiers']}, {m['prompts']} prompts x "
        f"{cfg.decoding.max_new_tokens} tokens (time model at the median {setting['tokens']} generated)"
    )
    print(
        f"measured: target {1e3 * m['target_tpot_s']:.2f} ms/token (verify forward {1e3 * m['verify_forward_s']:.2f} ms), "
        f"drafter {1e3 * m['drafter_tpot_s']:.2f} ms/token, c = {m['c']:.3f}, acceptance {m['acceptance']:.3f}"
    )
    for base in BASELINES:
        if f"dsi_speedup_vs_{base}" in m:
            print(f"dsi speedup vs {base:<12} {m[f'dsi_speedup_vs_{base}']:.3f}x")
    if "predicted_dsi_speedup_vs_si" in m:
        share = m["dsi_speedup_vs_si"] / m["predicted_dsi_speedup_vs_si"]
        print(
            f"time model predicts dsi vs si {m['predicted_dsi_speedup_vs_si']:.3f}x, vs nonsi "
            f"{m['predicted_dsi_speedup_vs_nonsi']:.3f}x; measured/predicted (vs si) = {share:.1%}"
        )
        m["measured_over_predicted_vs_si"] = share
    print(f"cache reuse {m['cache_reuse']:.1%} of prefix tokens, {m['computed_per_task']:.1f} tokens computed per task")
    if cfg.models.kind == "emulated":
        from dsi_mpi.backends.emulated import SLICES as layers
    else:
        from transformers import AutoConfig

        layers = AutoConfig.from_pretrained(cfg.models.target).num_hidden_layers
    m["target_layer_s"] = m["verify_forward_s"] / layers
    print(
        f"stale work: {m['tasks_stale']} of {m['tasks_sent']} dsi tasks; {m['cancellations']} cancellations, "
        f"{m['aborted_fraction']:.0%} stopped mid-forward; median busy after a rejection "
        f"{1e3 * m['median_busy_after_reject_s']:.3f} ms (one target layer: {1e3 * m['target_layer_s']:.3f} ms)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(m, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
