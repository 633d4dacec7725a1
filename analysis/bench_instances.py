"""Throughput of G DSI instances in one job (runtime.instances), LATENCY EMULATION (sleeps), side by side.

usage: python -m analysis.bench_instances [--instances 1 2 4 8] [--stages P] [--prompts 64] [--out FILE.json]

Each G runs the same emulated job (instances of a drafter + 1 verifier, target 30 ms per forward,
drafter 6 ms per token, acceptance 0.6, prompts of 8..64 generated tokens drawn per prompt by
emulation.min_new_tokens) under the venv's mpiexec with 1 + G x S ranks (G = 1: the one-instance job, S
ranks, no scheduler). S = 2, or with --stages P > 1 the verifier is one pipelined group of P stages
(runtime.pipeline_stages: each stage sleeps 1/P of the target's latencies and sends real activation
messages), S = 1 + P. Sleeps do not need cores, so this measures the machinery (queue, messages, writer,
stages), not the CPU. Figures, all by dsi_mpi/reporting/throughput.py from each results file:
- tokens/s = generated tokens / job wall time (`throughput`); efficiency(G) = tokens/s(G) / (G x tokens/s(1));
- ideal wall time(G) = the G = 1 run's work / G + its longest prompt (`ideal_wall_s` over the G = 1 records),
  and wall(G) / ideal(G);
- best length-blind efficiency(G): the G = 1 prompts' own durations handed out in prompt order to the first
  free instance with no overhead (`list_schedule_wall_s`): what any scheduler that cannot know generation
  lengths reaches on this prompt order, so the bar above it is the workload's, not the machinery's;
- every G's tokens are checked equal to G = 1's, prompt for prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from analysis.jobs import job_command, job_env, run_bounded
from dsi_mpi.io.config import write_config
from dsi_mpi.io.results import read_results
from dsi_mpi.reporting.throughput import ideal_wall_s, list_schedule_wall_s, throughput

JOB = {  # what write_config writes for each G; the prompt set and the output path are added per run
    "models": {"kind": "emulated"},
    "decoding": {"algorithms": ["dsi"], "lookahead": 4, "max_new_tokens": 64, "warmup_prompts": 0},
    "emulation": {
        "target_ttft_s": 0.05,
        "target_tpot_s": 0.03,
        "drafter_ttft_s": 0.01,
        "drafter_tpot_s": 0.006,
        "acceptance": 0.6,
        "prompt_tokens": 32,
        "min_new_tokens": 8,
    },
    "runtime": {"timeout_s": 60.0},
}


def run(g: int, workdir: Path, prompts: Path, stages: int = 1) -> list[dict]:
    out = workdir / f"g{g}.h5"
    where = {"prompts": {"path": str(prompts)}, "output": {"path": str(out), "overwrite": True}}
    config = write_config(workdir / f"g{g}.toml", JOB | where)
    size = 1 + stages
    ranks = size if g == 1 else 1 + size * g
    settings = {"runtime.instances": g, "runtime.pipeline_stages": stages}
    status = run_bounded(job_command(ranks, config, settings, quiet=True), job_env(threads=1), 900, quiet=True)
    if status != 0:
        raise SystemExit(f"G = {g} failed ({'timed out' if status is None else status}): its errors are above")
    meta, records = read_results(str(out))
    layout = json.loads(meta["scheduler"])["layout"]
    shapes = {tuple(len(group["stages"]) for group in entry["groups"]) for entry in layout}
    assert len(layout) == g and shapes == {() if stages == 1 else (stages,)}, f"G = {g}: layout {layout}"
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--stages", type=int, default=1, help="P > 1: each verifier is a group of P pipeline stages")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    if args.instances[0] != 1:
        raise SystemExit("the first --instances must be 1 (the reference)")
    with tempfile.TemporaryDirectory(prefix="bench-instances-") as tmp:
        workdir = Path(tmp)
        prompts = workdir / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": "x"}) + "\n" for i in range(args.prompts)))
        results = {g: run(g, workdir, prompts, args.stages) for g in args.instances}
    reference = results[1]
    tokens = {r["prompt_index"]: r["tokens"] for r in reference}
    base, base_busy, work = (throughput(reference)[k] for k in ("tokens_per_s", "busy_tokens_per_s", "busy_s"))
    rows = []
    for g, records in results.items():
        assert {r["prompt_index"]: r["tokens"] for r in records} == tokens, f"G = {g}: tokens differ from G = 1"
        t = throughput(records)
        ideal = ideal_wall_s(reference, g)
        rows.append(
            {
                "instances": g,
                "prompts": len(records),
                "tokens": t["tokens"],
                "wall_s": t["wall_s"],
                "tokens_per_s": t["tokens_per_s"],
                "efficiency": t["tokens_per_s"] / (g * base),
                "busy_tokens_per_s": t["busy_tokens_per_s"],
                "busy_efficiency": t["busy_tokens_per_s"] / (g * base_busy),
                "work_over_g1": t["busy_s"] / work,
                "ideal_wall_s": ideal,
                "wall_over_ideal": t["wall_s"] / ideal,
                "length_blind_efficiency": work / (g * list_schedule_wall_s(reference, g)),
                "per_instance_tokens_per_s": [m["tokens_per_s"] for m in t["instances"].values()],
            }
        )
    print(
        "| G | prompts | tokens | wall s | tok/s | efficiency | busy tok/s | busy efficiency | work / G=1's "
        "| ideal wall s | wall / ideal | best length-blind efficiency |"
    )
    print("| --- " * 12 + "|")
    for r in rows:
        print(
            f"| {r['instances']} | {r['prompts']} | {r['tokens']} | {r['wall_s']:.2f} | {r['tokens_per_s']:.1f} | "
            f"{r['efficiency']:.3f} | {r['busy_tokens_per_s']:.1f} | {r['busy_efficiency']:.3f} | "
            f"{r['work_over_g1']:.3f} | {r['ideal_wall_s']:.2f} | {r['wall_over_ideal']:.3f} | "
            f"{r['length_blind_efficiency']:.3f} |"
        )
    shape = "drafter + 1 verifier" if args.stages == 1 else f"drafter + one {args.stages}-stage group"
    print(f"instances of {shape}; tokens equal to G = 1's for every prompt at every G")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
