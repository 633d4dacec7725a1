"""Pipelined verifier groups, measured: one P-stage group against P full replicas, and a real 2-stage group.

usage: python -m analysis.bench_pipeline emulated [--stages 2 4 7] [--tokens 100] [--prompts 4] [--lookahead K]
       python -m analysis.bench_pipeline real [--tokens 48] [--prompts 4]
       python -m analysis.bench_pipeline memory MODEL_FOLDER [--stages 4] [--tokens 160]
       python -m analysis.bench_pipeline layouts        (docs/pipelines.md's time-model table)
       python -m analysis.bench_pipeline cluster        (docs/pipelines.md's "which layout for my cluster" table)

emulated: LATENCY EMULATION (forwards are sleeps; ranks, messages, scheduling and cancellation are real):
target 30 ms per forward, c = 0.1, acceptance 0.8, one drafter. For each P, two jobs on P + 1 ranks run
nonsi, si and dsi on the same emulated prompts: P plain verifiers (each the whole target), and one group
of P stages (each stage sleeps 30/P ms and sends real activation messages of emulation.hidden_size floats
per token). Speedups are over the replicas' nonsi (the target on one rank); the model's prediction is the
simulator on each run's own draws, with the group as P replicas whose forward is longer by the P - 1
measured hops (dsi_mpi.timemodel.simulator.pipeline_setting), and "calibrated": at the latencies and message cost
each run measured (`calibrated`).
real: the default models, rank 0 + one 2-stage group (3 ranks): per-stage busy fractions, the hop of an
activation message, and how long the two stages computed different tasks at the same time.
memory: one process per rank kind (full model; each stage of a P-stage split) loads, prefills a prompt and
decodes: parameter + KV-cache bytes, and peak resident memory above the baseline after
`import torch, transformers`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from analysis.jobs import ROOT, job_command, job_env
from analysis.model_vs_machine import predict as on_draws

TPOT, C, A, SEED, PROMPT_TOKENS = 0.03, 0.1, 0.8, 0, 16


def run_job(ranks: int, settings: dict, out: Path) -> list[dict]:
    from dsi_mpi.io.results import read_results

    settings = settings | {"output.path": json.dumps(str(out)), "output.overwrite": "true"}
    command = job_command(ranks, ROOT / "inputs/configs/default.toml", settings, quiet=True)
    subprocess.run(command, check=True, cwd=ROOT, env=job_env(threads=1), stdout=subprocess.DEVNULL, timeout=1200)
    return read_results(str(out))[1]


def speedup(records: list[dict], algorithm: str, base_records: list[dict], base: str) -> float:
    """`algorithm` of `records` over `base` of `base_records` (two jobs on the same prompts, or one), by
    reporting.metrics.speedup: on the prompts both completed."""
    from dsi_mpi.reporting import metrics as mt

    pick = lambda recs, name: [r for r in recs if r["algorithm"] == name]
    return mt.speedup({"this": pick(records, algorithm), "base": pick(base_records, base)}, "this", "base")


def ms_per_token(records: list[dict], algorithm: str) -> float:
    """reporting.metrics' ms per token of one algorithm's records."""
    from dsi_mpi.reporting import metrics as mt

    return mt.algorithm_metrics([r for r in records if r["algorithm"] == algorithm], 1)["ms_per_token"]


def predict(k: int, stages: int, groups: int, hop_s: float, tokens: int) -> float:
    """The simulator's dsi latency on the runs' own draws (analysis/model_vs_machine.py's `predict`) for
    `groups` verifiers of `stages` stages at the nominal latencies."""
    from dsi_mpi.backends.emulated import SLICES
    from dsi_mpi.timemodel.simulator import Latencies, pipeline_setting

    ttft = TPOT * 5 / 3
    lat, sp = pipeline_setting(Latencies(C * ttft, C * TPOT, ttft, TPOT), stages, groups, hop_s)
    return on_draws("dsi", lat, 0.0, 1, False, A, k, sp, tokens, seed=SEED, prompt_tokens=PROMPT_TOKENS, layers=SLICES)


def calibrated(records: list[dict], k: int, sp: int, tokens: int) -> float:
    """The simulator's dsi latency on the same draws at the latencies and message cost the run itself
    measured (reporting.time_model.time_model_inputs, as analysis/model_vs_machine.py's "calibrated"): a
    group's verification time is its tasks' own, first stage start to last stage end, hops included, with
    SP = P slots. This takes the machine's overheads (sleep overshoot, wake-ups, 8 ranks on the cores) out
    of the comparison of rules."""
    from dsi_mpi.backends.emulated import SLICES
    from dsi_mpi.reporting import metrics as mt
    from dsi_mpi.reporting import time_model as tm
    from dsi_mpi.timemodel import inputs as ti

    m = tm.time_model_inputs(mt.by_algorithm(records))
    lat, message_s = ti.model_latencies(m)[0], m["message_s"]
    return on_draws(
        "dsi", lat, message_s, 1, False, A, k, sp, tokens, seed=SEED, prompt_tokens=PROMPT_TOKENS, layers=SLICES
    )


def emulated(args) -> int:
    from dsi_mpi.reporting.metrics import stage_hops
    from dsi_mpi.timemodel.simulator import Latencies, best_lookahead

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        prompts.write_text("".join(f'{{"id": "e{i}", "prompt": "emulated"}}\n' for i in range(args.prompts)))
        for p in args.stages:
            ttft = TPOT * 5 / 3
            k = (
                args.lookahead
                or best_lookahead(
                    "dsi", Latencies(C * ttft, C * TPOT, ttft, TPOT), A, args.tokens, p, nonsi_thread=p > 1
                )[0]
            )
            base = {
                "models.kind": '"emulated"',
                "decoding.algorithms": '["nonsi", "si", "dsi"]',
                "decoding.lookahead": k,
                "decoding.max_new_tokens": args.tokens,
                "decoding.warmup_prompts": 0,
                "decoding.seed": SEED,
                "prompts.path": json.dumps(str(prompts)),
                "emulation.target_tpot_s": TPOT,
                "emulation.target_ttft_s": ttft,
                "emulation.drafter_tpot_s": C * TPOT,
                "emulation.drafter_ttft_s": C * ttft,
                "emulation.acceptance": A,
                "emulation.prompt_tokens": PROMPT_TOKENS,
                "runtime.timeout_s": 120.0,
            }
            replicas = run_job(p + 1, base, Path(tmp) / f"replicas{p}.h5")
            group = run_job(p + 1, base | {"runtime.pipeline_stages": p}, Path(tmp) / f"group{p}.h5")
            hops = stage_hops([r for r in group if r["algorithm"] == "dsi"])
            hop = float(np.median(hops)) if len(hops) else 0.0
            row = {
                "stages": p,
                "k": k,
                "replicas_dsi_speedup": speedup(replicas, "dsi", replicas, "nonsi"),
                "group_dsi_speedup": speedup(group, "dsi", replicas, "nonsi"),
                "group_own_nonsi_speedup": speedup(group, "dsi", group, "nonsi"),
                "median_hop_ms": 1e3 * hop,
                "group_dsi_ms_per_token": ms_per_token(group, "dsi"),
                "model_ms_per_token": 1e3 * predict(k, p, 1, hop, args.tokens) / args.tokens,
                "model_no_hops_ms_per_token": 1e3 * predict(k, p, 1, 0.0, args.tokens) / args.tokens,
                "replicas_dsi_ms_per_token": ms_per_token(replicas, "dsi"),
                "replicas_model_ms_per_token": 1e3 * predict(k, 1, p, 0.0, args.tokens) / args.tokens,
                "group_calibrated_ms_per_token": 1e3 * calibrated(group, k, p, args.tokens) / args.tokens,
                "replicas_calibrated_ms_per_token": 1e3 * calibrated(replicas, k, p, args.tokens) / args.tokens,
            }
            row["group_vs_replicas"] = row["group_dsi_speedup"] / row["replicas_dsi_speedup"]
            row["group_vs_model"] = row["group_dsi_ms_per_token"] / row["model_ms_per_token"] - 1
            row["group_vs_calibrated"] = row["group_dsi_ms_per_token"] / row["group_calibrated_ms_per_token"] - 1
            row["replicas_vs_calibrated"] = (
                row["replicas_dsi_ms_per_token"] / row["replicas_calibrated_ms_per_token"] - 1
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        "| P | k | dsi speedup, P replicas | dsi speedup, one P-stage group | group / replicas | hop ms | "
        "group ms/tok (model) | off the model | off the model, calibrated: group, replicas |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['stages']} | {r['k']} | {r['replicas_dsi_speedup']:.3f}x | {r['group_dsi_speedup']:.3f}x | "
            f"{r['group_vs_replicas']:.3f} | {r['median_hop_ms']:.2f} | {r['group_dsi_ms_per_token']:.2f} "
            f"({r['model_ms_per_token']:.2f}) | {r['group_vs_model']:+.1%} | {r['group_vs_calibrated']:+.1%}, "
            f"{r['replicas_vs_calibrated']:+.1%} |"
        )
    return 0


def real(args) -> int:
    from dsi_mpi.reporting.metrics import stage_hops, stage_overlap_s, verifier_busy

    with tempfile.TemporaryDirectory() as tmp:
        settings = {
            "decoding.algorithms": '["nonsi", "si", "dsi"]',
            "decoding.lookahead": 3,
            "decoding.max_new_tokens": args.tokens,
            "prompts.limit": args.prompts,
            "runtime.pipeline_stages": 2,
        }
        records = run_job(3, settings, Path(tmp) / "real.h5")
    for algorithm in ("si", "dsi"):
        recs = [r for r in records if r["algorithm"] == algorithm]
        wall = sum(r["wall_s"] for r in recs)
        busy = sum(verifier_busy(r, 2) for r in recs) / wall
        overlap = sum(stage_overlap_s(r) for r in recs)
        hops = 1e3 * stage_hops(recs)
        print(
            f"{algorithm}: {sum(len(r['tokens']) for r in recs)} tokens, {1e3 * wall / sum(len(r['tokens']) for r in recs):.2f}"
            f" ms/token; busy fraction stage 1 (rank 1) {busy[0]:.3f}, stage 2 (rank 2) {busy[1]:.3f}; hop median "
            f"{np.median(hops):.3f} ms (p10 {np.percentile(hops, 10):.3f}, p90 {np.percentile(hops, 90):.3f}, "
            f"n {len(hops)}); stages computing different tasks at once {overlap:.3f} s = {overlap / wall:.1%} of wall"
        )
    by = {}
    for r in records:
        by.setdefault(r["prompt_index"], {})[r["algorithm"]] = r["tokens"]
    same = all(len({json.dumps(v) for v in d.values()}) == 1 for d in by.values())
    print(
        f"dsi/nonsi {speedup(records, 'dsi', records, 'nonsi'):.3f}x, si/nonsi {speedup(records, 'si', records, 'nonsi'):.3f}x; "
        f"every algorithm wrote the same tokens: {same}"
    )
    return 0


MEMORY_PROBE = r"""
import json, resource, sys, torch, transformers
torch.set_num_threads(1)
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
base_rss = rss()
folder, stages, index, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
config = transformers.AutoConfig.from_pretrained(folder)
transformers.AutoModelForCausalLM._model_mapping[type(config)]  # imports the model's code (scipy, sympy, ...)
code_rss = rss()
from dsi_mpi.backends.hf import HFRunner
from dsi_mpi.backends.stage import HFStageRunner, build_stage_model, param_bytes
if stages == 1:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    runner = HFRunner(model)
else:
    model, layers = build_stage_model(folder, torch.float32, stages, index)
    runner = HFStageRunner(model, index == 0, index == stages - 1, layers)
prompt = list(range(10, 10 + tokens // 2))
hidden = torch.randn(1, model.config.hidden_size).numpy()
def step(chunk):
    if stages > 1 and index > 0:
        runner.incoming = hidden.repeat(len(chunk), 0)
    runner.forward(chunk, 1)
step(prompt)
for t in range(tokens - len(prompt)):
    step([11 + t % 50])
kv = sum(l.keys.numel() * l.keys.element_size() + l.values.numel() * l.values.element_size() for l in runner.cache.layers)
print(json.dumps({"stages": stages, "index": index, "params_bytes": param_bytes(model), "kv_bytes": kv,
                  "cached_tokens": runner.cache_len(), "baseline_rss": base_rss, "code_rss": code_rss,
                  "peak_above_baseline": peak() - base_rss, "peak_above_code": peak() - code_rss}))
"""


def memory(args) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rows = []
    for stages, index in [(1, 0)] + [(args.stages, i) for i in range(args.stages)]:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                MEMORY_PROBE,
                str(Path(args.model).resolve()),
                str(stages),
                str(index),
                str(args.tokens),
            ],
            check=True,
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    full = rows[0]
    mib = 2**20
    print(
        "| rank | parameters MiB | KV cache MiB | params + KV vs full | peak RSS above baseline MiB | vs full "
        "| peak RSS above baseline + model code MiB | vs full |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = "full model" if r["stages"] == 1 else f"stage {r['index'] + 1}/{r['stages']}"
        model = r["params_bytes"] + r["kv_bytes"]
        print(
            f"| {name} | {r['params_bytes'] / mib:.1f} | {r['kv_bytes'] / mib:.2f} | "
            f"{model / (full['params_bytes'] + full['kv_bytes']):.3f} | {r['peak_above_baseline'] / mib:.1f} | "
            f"{r['peak_above_baseline'] / full['peak_above_baseline']:.3f} | {r['peak_above_code'] / mib:.1f} | "
            f"{r['peak_above_code'] / full['peak_above_code']:.3f} |"
        )
    print(
        f"baseline RSS after import torch, transformers: {full['baseline_rss'] / mib:.0f} MiB; importing the model's "
        f"code adds {(full['code_rss'] - full['baseline_rss']) / mib:.0f} MiB"
    )
    return 0


def layouts(args) -> int:
    """The time model's dsi speedup over plain decoding for one pipeline of P, P/2 copies of 2 stages and P
    replicas (t = 30 ms, c = 0.1, a = 0.8, 200 tokens, best k each), for hops h."""
    from dsi_mpi.timemodel.simulator import Latencies, best_lookahead, nonsi_latency, pipeline_setting

    base, tokens = Latencies(C * TPOT, C * TPOT, TPOT, TPOT), 200
    print("| P devices | h | one pipeline of P | P/2 copies of 2 stages | P full replicas |")
    print("| --- | --- | --- | --- | --- |")
    for p in (4, 8):
        for h in (5e-5, 5e-4, 2e-3):
            cells = []
            for stages, groups in ((p, 1), (2, p // 2), (1, p)):
                lat, sp = pipeline_setting(base, stages, groups, h)
                k, latency = best_lookahead("dsi", lat, A, tokens, sp, nonsi_thread=True)
                cells.append(f"{nonsi_latency(base, tokens) / latency:.3f}x (k {k})")
            print(f"| {p} | {h * 1e3:g} ms | " + " | ".join(cells) + " |")
    return 0


CLUSTERS = [(8, 1, 1), (8, 1, 2), (8, 1, 4), (8, 8, 1), (8, 8, 2), (8, 8, 4), (8, 8, 8), (4, 16, 2), (4, 16, 4)]


def instances_that_fit(gpus_per_node: int, nodes: int, size: int, stages: int, groups: int) -> int:
    """G: the most instances of `size` ranks (a drafter, `groups` groups of `stages` ranks, the rest plain) on
    the cluster, one rank per GPU, with every group on one node, as dsi_mpi.mpi.instances.assign places them
    (tasks filled node by node; the scheduler rank on the first node, without a GPU)."""
    from dsi_mpi.mpi.instances import assign

    g = gpus_per_node * nodes // size
    if stages > 1:
        g = min(g, nodes * (gpus_per_node // stages) // groups)
    while g >= 1:
        workers = [n for n in range(nodes) for _ in range(gpus_per_node)][: g * size]
        if not assign([0] + workers, g, stages, groups if stages > 1 else 0)[2]:
            return g
        g -= 1
    return 0


def cluster(args) -> int:
    """The time model's answer to "which layout for my cluster" (docs/pipelines.md): for GPUs per node, nodes and the
    GPUs the target needs (its fewest stages), every layout of instances (a drafter + m groups of P stages,
    or + m plain verifiers when the target fits one GPU) that fits, scored by the job's tokens per second
    against plain decoding with every GPU in use (one copy of the target per P_min GPUs). One rank per GPU,
    groups on one node (hop 0.05 ms), t = 30 ms, c = 0.1, a = 0.8, 200 tokens, best k each."""
    from functools import cache

    from dsi_mpi.timemodel.simulator import Latencies, best_lookahead, nonsi_latency, pipeline_setting

    base, tokens = Latencies(C * TPOT, C * TPOT, TPOT, TPOT), 200

    @cache
    def speedup(stages: int, verifiers: int) -> tuple[float, int]:
        lat, sp = pipeline_setting(base, stages, verifiers, 5e-5)
        k, latency = best_lookahead("dsi", lat, A, tokens, sp, lookaheads=range(1, 11), nonsi_thread=True)
        return nonsi_latency(base, tokens) / latency, k

    def shape(p: int, m: int) -> str:
        return f"{m} group{'s' * (m > 1)} of {p}" if p > 1 else f"{m} plain"

    print(
        "| GPUs per node | nodes | target needs | G | P | verifiers per instance | GPUs used | dsi speedup per "
        "instance | job tok/s vs plain decoding on all GPUs | next best layout |"
    )
    print("| --- " * 10 + "|")
    for gpn, nodes, need in CLUSTERS:
        rows = []
        for p in (q for q in (1, 2, 4, 8) if need <= q <= gpn):
            for m in range(1, 8 if p == 1 else 4):
                g = instances_that_fit(gpn, nodes, 1 + m * p, p, m)
                if g:
                    x, k = speedup(p, m)
                    rows.append({"score": g * x / (gpn * nodes // need), "g": g, "p": p, "m": m, "x": x, "k": k})
        rows.sort(key=lambda r: (-r["score"], -r["x"]))
        best = rows[0]
        nxt = f"G {rows[1]['g']} x {shape(rows[1]['p'], rows[1]['m'])}: {rows[1]['score']:.2f}x" if rows[1:] else "-"
        print(
            f"| {gpn} | {nodes} | {need} GPU{'s' * (need > 1)} | {best['g']} | {best['p']} | "
            f"{shape(best['p'], best['m'])} | {best['g'] * (1 + best['m'] * best['p'])} | {best['x']:.2f}x "
            f"(k {best['k']}) | {best['score']:.2f}x | {nxt} |",
            flush=True,
        )
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(usage=__doc__.split("\n\n")[1].strip(), description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    e = sub.add_parser("emulated")
    e.add_argument("--stages", type=int, nargs="+", default=[2, 4, 7])
    e.add_argument("--tokens", type=int, default=100)
    e.add_argument("--prompts", type=int, default=4)
    e.add_argument("--lookahead", type=int, default=0, help="0: the simulator's best for P replicas")
    r = sub.add_parser("real")
    r.add_argument("--tokens", type=int, default=48)
    r.add_argument("--prompts", type=int, default=4)
    m = sub.add_parser("memory")
    m.add_argument("model")
    m.add_argument("--stages", type=int, default=4)
    m.add_argument("--tokens", type=int, default=160)
    sub.add_parser("layouts")
    sub.add_parser("cluster")
    args = parser.parse_args(argv)
    commands = {"emulated": emulated, "real": real, "memory": memory, "layouts": layouts, "cluster": cluster}
    return commands[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
