"""Model versus machine: emulated MPI runs of dsi-mpi against the simulator's prediction.

usage: python -m analysis.model_vs_machine [--out results/model_vs_machine] [--tokens 200] [--prompts 2]
                                           [--target-tpot 0.03] [--warmup 1] [--quick] [--point C A K V ...]

Every grid point (c, a, k, verifiers; analysis/model_vs_machine_grid.csv, lookahead 0 = adaptive
speculation) is a real MPI job in LATENCY EMULATION mode (`[models] kind = "emulated"`: forwards are
sleeps, acceptance is drawn i.i.d.; ranks, messages, scheduling, cancellation and records are the real
code) running nonsi, si and dsi on the same emulated prompts. The simulator (dsi_mpi/timemodel/simulator.py: the
coordinator itself on a simulated clock) gets the same acceptance draws, lookahead, verifiers and prompts,
twice: with the nominal latencies ("predicted"), and with the latencies and message cost the run itself
measured (reporting.time_model.time_model_inputs: "calibrated"; at adaptive points the median over JITTER
of the drafter latency, and its spread), which takes the machine's own overheads
(sleep overshoot, wake-up of waiting ranks) out of the comparison of rules. Writes a CSV and Markdown table
and a PNG, and prints the worst relative errors and adaptive dsi's speed against si and nonsi.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

from analysis.jobs import ROOT, emulated_prompts, job_command, job_env
from dsi_mpi.reporting import metrics as mt
from dsi_mpi.reporting import time_model as tm
from dsi_mpi.timemodel import inputs as ti

GRID_FILE = Path(__file__).with_name("model_vs_machine_grid.csv")  # c, acceptance, lookahead, verifiers, quick


def grid(quick: bool) -> list[tuple]:
    """The grid points (c, acceptance, lookahead, verifiers); --quick: those marked quick."""
    with open(GRID_FILE, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["quick"] or not quick]
    return [(float(r["c"]), float(r["acceptance"]), int(r["lookahead"]), int(r["verifiers"])) for r in rows]


SEED, PROMPT_TOKENS = 0, 16
# Adaptive points: the calibrated prediction is the median over the measured drafter latency scaled by these.
# Every emulated prompt has the same draws, so where the rule's choices are close, which k it lands on is
# luck that a 1% change in a measured latency flips (c 0.1, a 0.8, V 1: at 0.98-1.02x the drafter latency
# the simulator gave 11.60, 11.63, 10.89, 11.88 and 11.91 ms/token, k 6 landing on the draw's best block
# alignment only at 1.00x); the machine's own estimates move by more than that within a run.
JITTER = (0.98, 0.99, 1.0, 1.01, 1.02)


def run_point(c, a, k, v, args, workdir: Path) -> dict:
    from dsi_mpi.io.results import read_results

    out = workdir / f"c{c}_a{a}_k{k}_v{v}.h5"
    prompts = emulated_prompts(workdir / "prompts.jsonl", args.prompts, "e")
    tpot, ttft = args.target_tpot, args.target_tpot * 5 / 3
    settings = {
        "models.kind": '"emulated"',
        "decoding.algorithms": '["nonsi", "si", "dsi"]',
        "decoding.lookahead": k or '"adaptive"',
        "decoding.max_new_tokens": args.tokens,
        "decoding.warmup_prompts": args.warmup,
        "prompts.path": json.dumps(str(prompts)),
        "output.path": json.dumps(str(out)),
        "output.overwrite": "true",
        "emulation.target_tpot_s": tpot,
        "emulation.target_ttft_s": ttft,
        "emulation.drafter_tpot_s": c * tpot,
        "emulation.drafter_ttft_s": c * ttft,
        "emulation.acceptance": a,
        "emulation.prompt_tokens": PROMPT_TOKENS,
        "decoding.seed": SEED,
        "runtime.timeout_s": 120.0,
    }
    command = job_command(v + 1, ROOT / "inputs/configs/default.toml", settings)
    subprocess.run(command, check=True, cwd=ROOT, env=job_env(), stdout=subprocess.DEVNULL, timeout=900)
    meta, records = read_results(str(out))
    figures = mt.compare(records, mt.job_shape(meta, records)["verifiers"])
    row = {"c": c, "a": a, "k": k, "verifiers": v, "tokens": args.tokens, "target_tpot_s": tpot}
    from dsi_mpi.timemodel.simulator import Latencies

    nominal = Latencies(drafter_ttft=c * ttft, drafter_tpot=c * tpot, target_ttft=ttft, target_tpot=tpot)
    measured = tm.time_model_inputs(mt.by_algorithm(records))
    for alg in ("nonsi", "si", "dsi"):
        row[f"measured_{alg}_s"] = figures[alg]["wall_s"] / figures[alg]["prompts"]
        job = (figures[alg]["prompts"], args.warmup, a, k, v, args.tokens)
        row[f"predicted_{alg}_s"] = predict(alg, nominal, 0.0, *job)
        if measured is not None:
            lat = ti.model_latencies(measured)[1 if alg == "nonsi" else 0]
            jitter = JITTER if k == 0 and alg != "nonsi" else (1.0,)
            spread = sorted(
                predict(alg, dataclasses.replace(lat, drafter_tpot=lat.drafter_tpot * f), measured["message_s"], *job)
                for f in jitter
            )
            row[f"calibrated_{alg}_s"] = spread[len(spread) // 2]
            row[f"calibrated_{alg}_spread"] = spread[-1] / spread[0] - 1
    row["measured_dsi_ms_per_token"] = figures["dsi"]["ms_per_token"]
    row["measured_dsi_vs_si"] = figures["dsi"]["speedup_vs_si"]
    row["measured_dsi_vs_nonsi"] = figures["dsi"]["speedup_vs_nonsi"]
    return row


def predict(alg, lat, message_s, prompts, warmup, a, k, v, tokens, seed=SEED, prompt_tokens=PROMPT_TOKENS, layers=0):
    """The simulator's mean latency over the job's prompts, run one after another on the same simulated
    ranks (adaptive speculation learns across them, from the warm-up prompt on, as in the job) with the
    runs' own draws: the emulated drafter matches the target at position p exactly when emulated_match(seed,
    p) says so, so model and machine share their luck (every emulated prompt has `prompt_tokens` tokens, so
    every prompt has the same draws). layers: the drafter's (0: the emulated drafter's SLICES), between
    which rank 0 reads replies."""
    from dsi_mpi.backends.emulated import SLICES, emulated_match
    from dsi_mpi.timemodel.simulator import nonsi_latency
    from dsi_mpi.timemodel.virtual import run_simulated

    if alg == "nonsi":
        return nonsi_latency(lat, tokens)
    match = [emulated_match(seed, prompt_tokens + i, a) for i in range(tokens)]
    extra = dict(nonsi_thread=v > 1, drafter_layers=layers or SLICES, message_s=message_s, prompt_tokens=prompt_tokens)
    records = run_simulated(alg, lat, [match] * prompts, k, v, warmup=match if warmup else None, **extra)
    return sum(r.wall_s for r in records) / len(records)


def summarise(rows: list[dict]) -> list[dict]:
    for r in rows:
        r["dsi_error"] = r["measured_dsi_s"] / r["predicted_dsi_s"] - 1
        r["si_error"] = r["measured_si_s"] / r["predicted_si_s"] - 1
        r["dsi_calibrated_error"] = r["measured_dsi_s"] / r.get("calibrated_dsi_s", math.nan) - 1
        r["si_calibrated_error"] = r["measured_si_s"] / r.get("calibrated_si_s", math.nan) - 1
        r["predicted_dsi_vs_si"] = r["predicted_si_s"] / r["predicted_dsi_s"]
        r["predicted_dsi_vs_nonsi"] = r["predicted_nonsi_s"] / r["predicted_dsi_s"]
    return rows


def _spread(r: dict, alg: str) -> str:
    spread = r.get(f"calibrated_{alg}_spread", 0.0)
    return f" (spread {spread:.0%})" if spread else ""


def write_outputs(rows: list[dict], prefix: Path) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{prefix}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "| c | a | k | V | dsi measured ms/tok | dsi predicted ms/tok | error | error, calibrated | si error, "
        "calibrated | dsi/si measured (predicted) | dsi/nonsi measured (predicted) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = r["tokens"]
        lines.append(
            f"| {r['c']} | {r['a']} | {r['k'] or 'adaptive'} | {r['verifiers']} | {r['measured_dsi_ms_per_token']:.2f} | "
            f"{1e3 * r['predicted_dsi_s'] / n:.2f} | {r['dsi_error']:+.1%} | {r['dsi_calibrated_error']:+.1%}"
            f"{_spread(r, 'dsi')} | {r['si_calibrated_error']:+.1%}{_spread(r, 'si')} | {r['measured_dsi_vs_si']:.2f}x "
            f"({r['predicted_dsi_vs_si']:.2f}x) | {r['measured_dsi_vs_nonsi']:.2f}x "
            f"({r['predicted_dsi_vs_nonsi']:.2f}x) |"
        )
    Path(f"{prefix}.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    pred = [1e3 * r["predicted_dsi_s"] / r["tokens"] for r in rows]
    meas = [r["measured_dsi_ms_per_token"] for r in rows]
    lo, hi = min(pred + meas) * 0.9, max(pred + meas) * 1.1
    left.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="measured = predicted")
    left.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.9", label="within 10%")
    left.scatter(pred, meas, c=[r["verifiers"] for r in rows], cmap="viridis", zorder=3)
    left.set(
        xlabel="predicted dsi ms/token (simulator)",
        ylabel="measured dsi ms/token (emulated MPI)",
        title="dsi: model versus machine",
    )
    left.legend(loc="upper left")
    x = range(len(rows))
    right.bar([i - 0.2 for i in x], [r["measured_dsi_vs_si"] for r in rows], 0.4, label="measured dsi/si")
    right.bar([i + 0.2 for i in x], [r["predicted_dsi_vs_si"] for r in rows], 0.4, label="predicted dsi/si")
    right.axhline(1, color="k", lw=0.8)
    right.set_xticks(list(x), [f"c{r['c']} a{r['a']}\nk{r['k']} V{r['verifiers']}" for r in rows], fontsize=6)
    right.set(ylabel="speedup of dsi over si", title="speedup over si, measured and predicted")
    right.legend()
    fig.tight_layout()
    fig.savefig(f"{prefix}.png", dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(usage=__doc__.split("\n\n")[1].strip(), description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/model_vs_machine")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, choices=(0, 1), help="untimed warm-up prompts")
    parser.add_argument("--target-tpot", type=float, default=0.03)
    parser.add_argument("--quick", action="store_true", help="two grid points only")
    parser.add_argument(
        "--point",
        nargs=4,
        action="append",
        metavar=("C", "A", "K", "V"),
        help="run this point (repeatable), not the grid",
    )
    args = parser.parse_args(argv)
    points = [(float(c), float(a), int(k), int(v)) for c, a, k, v in args.point] if args.point else grid(args.quick)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for point in points:
            rows.append(run_point(*point, args, Path(tmp)))
            r = summarise([rows[-1]])[0]
            print(
                f"c={r['c']} a={r['a']} k={r['k'] or 'adaptive'} V={r['verifiers']}: dsi {r['dsi_error']:+.1%} vs "
                f"model ({r['dsi_calibrated_error']:+.1%} calibrated), si {r['si_error']:+.1%} "
                f"({r['si_calibrated_error']:+.1%}); "
                f"dsi/si {r['measured_dsi_vs_si']:.2f}x (model {r['predicted_dsi_vs_si']:.2f}x), dsi/nonsi "
                f"{r['measured_dsi_vs_nonsi']:.2f}x (model {r['predicted_dsi_vs_nonsi']:.2f}x)",
                flush=True,
            )
    summarise(rows)
    write_outputs(rows, Path(args.out))
    worst = max(rows, key=lambda r: abs(r["dsi_error"]))
    for key in ("dsi_error", "si_error", "dsi_calibrated_error", "si_calibrated_error"):
        w = max(rows, key=lambda r: abs(r[key]))
        print(f"worst {key}: {w[key]:+.1%} at c={w['c']} a={w['a']} k={w['k']} V={w['verifiers']}")
    adaptive = [r for r in rows if r["k"] == 0]
    if adaptive:
        print(
            "adaptive dsi: min over the grid of dsi/nonsi "
            f"{min(r['measured_dsi_vs_nonsi'] for r in adaptive):.3f}x and of dsi/si "
            f"{min(r['measured_dsi_vs_si'] for r in adaptive):.3f}x ({len(adaptive)} points)"
        )
    print(
        f"worst dsi error {worst['dsi_error']:+.1%} at c={worst['c']} a={worst['a']} k={worst['k']} "
        f"V={worst['verifiers']}; dsi faster than si in {sum(r['measured_dsi_vs_si'] > 1 for r in rows)}/{len(rows)} "
        f"runs and than nonsi in {sum(r['measured_dsi_vs_nonsi'] > 1 for r in rows)}/{len(rows)}"
    )
    print(f"wrote {args.out}.csv, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
